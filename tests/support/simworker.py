"""Simulated workers for engine tests: the worker protocol of API.md, with a journal.

A `SimWorker` registers, heartbeats every `heartbeat_interval_s` with the set it runs,
long-polls its assignment version, and converges at once to every answer it applies
(stop what is absent, start what is new). Answers are applied in `version` order; an
older one is ignored. "Running" a stream costs nothing: it is an entry in a dict and a
`Record` in the `Journal`, with `time.monotonic()` and the fencing token.

From the journal, tests compute what the workers themselves saw: moments where a
stream ran on two workers (I1), tokens that did not grow, or time a stream ran nowhere.

Ways a worker ends:

* `stop()` — a clean shutdown: every stream is stopped (and journaled) now.
* `crash()` — the process dies: its streams stop now, nothing is said to the server.
* `kill()` — it stops heartbeating silently but keeps running what it runs (a hung or
  partitioned process). Its streams are journaled as stopping at its lease deadline —
  the latest moment the SDK's self-fencing (I3) lets them run — so a grant elsewhere
  before that deadline shows up as an overlap.

On 409 (`superseded`, `lease_expired`) or 404 a worker stops everything and, if
`rejoin`, registers again. With several base URLs it fails over to the next one
after a transport error or a 5xx.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import httpx

from tests.support.sim_journal import Journal, Record

Target = str | httpx.AsyncClient


class SimWorker:
    """One simulated worker process; see the module docstring."""

    def __init__(
        self,
        name: str,
        targets: Target | Sequence[Target],
        *,
        capacity: int = 20,
        labels: dict[str, str] | None = None,
        journal: Journal | None = None,
        long_poll: bool = True,
        long_poll_wait: float = 5.0,
        rejoin: bool = True,
        report_promptly: bool = True,
        fence_margin: float = 0.0,
        request_timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.labels = dict(labels or {})
        self.journal = journal if journal is not None else Journal()
        self.long_poll = long_poll
        self.long_poll_wait = long_poll_wait
        self.rejoin = rejoin
        self.report_promptly = report_promptly
        self.fence_margin = fence_margin
        self.request_timeout = request_timeout
        items = [targets] if isinstance(targets, str | httpx.AsyncClient) else list(targets)
        if not items:
            raise ValueError("a SimWorker needs at least one base URL or client")
        self._owned: list[httpx.AsyncClient] = []
        self._clients: list[httpx.AsyncClient] = []
        for item in items:
            if isinstance(item, str):
                client = httpx.AsyncClient(base_url=item, timeout=request_timeout)
                self._owned.append(client)
                self._clients.append(client)
            else:
                self._clients.append(item)
        self._target = 0

        self.worker_id: str | None = None
        self.incarnation = 0
        self.heartbeat_interval = 1.0
        self.lease_ttl = 10.0
        self.kept_streams: int | None = None
        self.version = -1
        self._desired_at_version: dict[str, int] = {}
        self.running: dict[str, int] = {}  # stream -> token
        self.weights: dict[str, int] = {}
        self.draining = False

        self.heartbeats = 0
        self.secret: str | None = None  # the `secret` of the last registration
        self.applied = 0
        self.ignored = 0
        self.failovers = 0
        self.conflicts: list[str] = []
        self.errors: list[str] = []  # unexpected answers (5xx, 4xx other than 404/409)
        self.transport_errors: list[str] = []
        self.anomalies: list[str] = []  # protocol breaches seen from the worker
        # The last exchanges, for failure reports: (sent, answered, what, detail).
        self.trace: collections.deque[tuple[float, float, str, str]] = collections.deque(maxlen=200)

        self.dead = False  # kill() or crash()
        self.stopped = False  # stop()
        self.fenced = False  # 409 with rejoin=False: done for good
        self.fence_at: float | None = None  # kill(): when its streams are taken as stopped
        self.last_renew_sent: float | None = None
        self._epoch = 0  # grows with each registration; stale answers are dropped
        self._registering = False
        # The worker's network, for tests that delay it: requests wait for `uplink`
        # after they are composed, answers wait for `downlink` before they are applied.
        self.uplink = asyncio.Event()
        self.downlink = asyncio.Event()
        self.uplink.set()
        self.downlink.set()
        self.parked = 0  # requests that waited for the uplink
        self.polling = False  # a long-poll is on the wire
        self._wake = asyncio.Event()
        self._hb_lock = asyncio.Lock()  # one heartbeat or registration at a time
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return str(self._clients[self._target].base_url)

    @property
    def alive(self) -> bool:
        return not (self.dead or self.stopped or self.fenced)

    async def start(self) -> SimWorker:
        await self._register()
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}-hb"))
        if self.long_poll:
            self._tasks.append(asyncio.create_task(self._long_poll_loop(), name=f"{self.name}-lp"))
        self._tasks.append(asyncio.create_task(self._fence_loop(), name=f"{self.name}-fence"))
        return self

    async def stop(self) -> None:
        """A clean shutdown: stop every stream now and go away (no deregistration)."""
        if self.dead or self.stopped:
            await self._cancel()
            return
        self.stopped = True
        await self._cancel()
        self._stop_all("shutdown")

    async def crash(self) -> None:
        """The process dies: its streams stop with it; the server is not told."""
        if self.dead or self.stopped:
            return
        self.dead = True
        await self._cancel()
        self._stop_all("crash")

    async def kill(self) -> None:
        """Stop heartbeating silently, keep running (a hung or partitioned worker).

        Its streams are journaled as stopping at the deadline the SDK's self-fencing
        keeps (I3): the send time of the last renewal it saw confirmed, plus the lease,
        minus the margin. The server's lease ends no earlier (it counts from when it
        received that heartbeat, or from a later one whose answer was lost).
        """
        if self.dead or self.stopped:
            return
        renewed = self.last_renew_sent if self.last_renew_sent is not None else time.monotonic()
        self.fence_at = renewed + self.lease_ttl - self.fence_margin
        self.dead = True
        await self._cancel()
        for stream in sorted(self.running):
            self._record(self.fence_at, "stop", stream, self.running[stream], "fence")

    async def aclose(self) -> None:
        await self.stop()
        for client in self._owned:
            await client.aclose()
        self._owned.clear()

    async def _cancel(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def set_draining(self, draining: bool = True) -> None:
        """Report `status: draining` from the next heartbeat on (what the SDK does on SIGTERM)."""
        self.draining = draining
        self._wake.set()

    # -- HTTP ------------------------------------------------------------------
    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        index = self._target
        client = self._clients[index]
        kwargs.setdefault("timeout", self.request_timeout)
        if self.secret is not None:  # the worker's credential; on register, its proof
            kwargs["headers"] = {"X-Worker-Secret": self.secret, **kwargs.get("headers", {})}
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            self.transport_errors.append(f"{client.base_url}{path}: {type(exc).__name__}")
            self._failover(index)
            raise
        if response.status_code >= 500:
            self.errors.append(f"{method} {path} -> {response.status_code}: {response.text[:300]}")
            self._failover(index)
        return response

    def _failover(self, index: int) -> None:
        if len(self._clients) > 1 and index == self._target:
            self._target = (index + 1) % len(self._clients)
            self.failovers += 1

    async def _register(self) -> None:
        self._registering = True
        body = {"name": self.name, "capacity": self.capacity, "labels": self.labels}
        try:
            for attempt in range(100):
                sent = time.monotonic()
                try:
                    response = await self._request("POST", "/v1/workers/register", json=body)
                except httpx.TransportError:
                    await asyncio.sleep(min(0.05 * 2**attempt, 0.5))
                    continue
                if response.status_code >= 500:
                    await asyncio.sleep(min(0.05 * 2**attempt, 0.5))
                    continue
                if response.status_code != 201:
                    raise AssertionError(
                        f"{self.name}: register answered {response.status_code}: {response.text}"
                    )
                data = response.json()
                self._epoch += 1
                self.worker_id = data["worker_id"]
                self.secret = data["secret"]
                self.incarnation = data["incarnation"]
                self.heartbeat_interval = float(data["heartbeat_interval_s"])
                self.lease_ttl = float(data["lease_ttl_s"])
                self.kept_streams = data.get("kept_streams")
                self.last_renew_sent = sent
                return
            raise AssertionError(f"{self.name}: could not register: {self.transport_errors[-3:]}")
        finally:
            self._registering = False

    async def reregister(self) -> int | None:
        """Register again under the same name while running (a restart within the lease).

        Keeps what it runs; returns `kept_streams` from the answer. The next answer
        re-grants the same streams with new tokens (journaled as `retoken`).
        """
        async with self._hb_lock:
            await self._register()
        self._wake.set()
        return self.kept_streams

    # -- applying answers --------------------------------------------------------
    def _record(self, t: float, kind: str, stream: str, token: int, why: str) -> None:
        self.journal.add(Record(t, self.name, self.incarnation, kind, stream, token, why))

    def _stop_all(self, why: str) -> None:
        now = time.monotonic()
        for stream in sorted(self.running):
            self._record(now, "stop", stream, self.running[stream], why)
        self.running.clear()
        self.weights.clear()

    def apply(self, answer: dict[str, Any], source: str, epoch: int | None = None) -> bool:
        """Converge to `answer` unless it is older than what was applied; True if applied."""
        if not self.alive or self._registering:
            return False
        if epoch is not None and epoch != self._epoch:
            self.ignored += 1  # computed for an earlier registration
            return False
        incarnation = answer.get("incarnation")
        if incarnation is not None and incarnation != self.incarnation:
            self.ignored += 1
            return False
        version = int(answer["version"])
        desired = {a["stream"]: int(a["token"]) for a in answer["assignments"]}
        weights = {a["stream"]: int(a["weight"]) for a in answer["assignments"]}
        if version < self.version:
            self.ignored += 1
            return False
        if version == self.version and desired != self._desired_at_version:
            self.anomalies.append(
                f"{self.name}: two answers with version {version} differ ({source}): "
                f"{_diff(self._desired_at_version, desired)}"
            )
        self.version = version
        self._desired_at_version = desired
        self.applied += 1
        now = time.monotonic()
        stopped = False
        for stream in sorted(set(self.running) - set(desired)):
            self._record(now, "stop", stream, self.running.pop(stream), source)
            self.weights.pop(stream, None)
            stopped = True
        for stream, token in sorted(desired.items()):
            held = self.running.get(stream)
            if held is None:
                self.running[stream] = token
                self._record(now, "start", stream, token, source)
            elif held != token:
                if token < held:
                    self.anomalies.append(f"{self.name}: {stream} token went {held} -> {token}")
                self.running[stream] = token
                self._record(now, "retoken", stream, token, source)
            self.weights[stream] = weights[stream]
        load = sum(self.weights.values())
        if load > self.capacity:
            self.anomalies.append(
                f"{self.name}: told to run weight {load} > capacity {self.capacity} (I4)"
            )
        if stopped and self.report_promptly:
            self._wake.set()  # report the stop now: moves finish on the old owner's report
        return True

    # -- loops -----------------------------------------------------------------
    async def heartbeat_once(self) -> httpx.Response | None:
        """One heartbeat reporting what runs now; applies the answer. None on transport error."""
        async with self._hb_lock:
            return await self._heartbeat_locked()

    async def _heartbeat_locked(self) -> httpx.Response | None:
        assert self.worker_id is not None
        body = {
            "incarnation": self.incarnation,
            "running": sorted(self.running),
            "status": "draining" if self.draining else "active",
            "version": self.version if self.version >= 0 else None,
        }
        epoch = self._epoch
        await self._uplink()
        sent = time.monotonic()
        try:
            response = await self._request(
                "POST", f"/v1/workers/{self.worker_id}/heartbeat", json=body
            )
        except httpx.TransportError:
            return None
        await self.downlink.wait()
        if response.status_code == 200:
            if epoch == self._epoch:
                self.last_renew_sent = max(sent, self.last_renew_sent or 0.0)
            self.heartbeats += 1
            answer = response.json()
            self.trace.append(
                (
                    sent,
                    time.monotonic(),
                    "heartbeat",
                    f"reported {len(body['running'])} -> v{answer['version']} "
                    f"with {len(answer['assignments'])}",
                )
            )
            self.apply(answer, "heartbeat", epoch)
        elif response.status_code in (404, 409) and epoch == self._epoch:
            await self._conflict(response.json()["error"]["code"])
        elif response.status_code < 500:
            self.errors.append(f"heartbeat -> {response.status_code}: {response.text[:300]}")
        return response

    async def _uplink(self) -> None:
        if not self.uplink.is_set():
            self.parked += 1
            await self.uplink.wait()

    async def _conflict(self, code: str) -> None:
        self.conflicts.append(code)
        self._stop_all("conflict")
        if not self.rejoin:
            self.fenced = True
            return
        self.version = -1
        await self._register()

    async def _heartbeat_loop(self) -> None:
        while self.alive:
            self._wake.clear()
            await self.heartbeat_once()
            if not self.alive:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.heartbeat_interval)

    async def _long_poll_loop(self) -> None:
        while self.alive:
            if self.worker_id is None or self._registering:
                await asyncio.sleep(0.02)
                continue
            epoch = self._epoch
            params = {"version": max(self.version, 0), "wait": self.long_poll_wait}
            await self._uplink()
            sent = time.monotonic()
            self.polling = True
            try:
                response = await self._request(
                    "GET",
                    f"/v1/workers/{self.worker_id}/assignments",
                    params=params,
                    timeout=self.long_poll_wait + self.request_timeout,
                )
            except httpx.TransportError:
                await asyncio.sleep(min(0.1, self.heartbeat_interval))
                continue
            finally:
                self.polling = False
            await self.downlink.wait()
            if response.status_code == 200:
                answer = response.json()
                self.trace.append(
                    (
                        sent,
                        time.monotonic(),
                        "long-poll",
                        f"v{params['version']} -> v{answer['version']} "
                        f"with {len(answer['assignments'])}",
                    )
                )
                self.apply(answer, "long-poll", epoch)
            else:
                if response.status_code < 500:
                    self.errors.append(
                        f"long-poll -> {response.status_code}: {response.text[:300]}"
                    )
                await asyncio.sleep(self.heartbeat_interval)

    async def _fence_loop(self) -> None:
        """The SDK's self-fencing (I3): without a renewal for lease_ttl − margin, stop all."""
        while self.alive:
            await asyncio.sleep(min(0.05, self.lease_ttl / 20))
            renewed = self.last_renew_sent
            if (
                self.running
                and renewed is not None
                and time.monotonic() >= renewed + self.lease_ttl - self.fence_margin
            ):
                self._stop_all("fence")


def _diff(old: dict[str, int], new: dict[str, int]) -> str:
    gone = sorted(set(old) - set(new))
    came = sorted(set(new) - set(old))
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    return f"-{gone[:5]} +{came[:5]} ~{changed[:5]}"
