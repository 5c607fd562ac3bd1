"""`AsyncWorker`: the worker side of the protocol (docs/reference/worker-protocol.md).

Four tasks share one worker:

* heartbeat — every `heartbeat_interval_s` (± jitter) reports the streams it runs and the
  `version` of the last answer it applied; the answer renews the lease and carries the
  desired set. 409 (`superseded`, `lease_expired`) or 404: stop everything, register again.
  Transport errors and 5xx: keep running, retry with capped exponential backoff, and fail
  over to the next server URL.
* long-poll — waits on the assignment version, so grants and revokes arrive within
  ~100 ms instead of at the next heartbeat.
* converge — the only task that calls `on_assign` / `on_revoke`: it stops what is absent
  from the newest desired set, then starts what is new. A heartbeat sent meanwhile
  reports streams still starting or stopping as running and the previous `version`, so a
  move finishes only once the stream really stopped.
* fence — I3: when no renewal succeeded for `lease_ttl − fence_margin` (counted from the
  *send* time of the last renewal, which is never later than the server's own count), it
  revokes every stream locally before the server can give them to someone else. A later
  renewal that the server still accepts starts them again.

`shutdown()` (also on SIGTERM/SIGINT after `install_signal_handlers()`) drains: it asks
to be drained, waits until the orchestrator moved every stream away (bounded by
`drain_timeout`), stops whatever is left, reports it, and deregisters.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from streamorch.client import errors
from streamorch.client.http import Connection
from streamorch.client.models import Assignment, Desired, Registration

log = logging.getLogger(__name__)

Callback = Callable[[Assignment], Awaitable[None] | None]
MetricsSource = Callable[[], Mapping[str, Any]]


class AsyncWorker:
    """A worker process's connection to the orchestrator; see the module docstring.

    async def on_assign(stream: Assignment) -> None: ...
    async def on_revoke(stream: Assignment) -> None: ...

    worker = AsyncWorker("http://orchestrator:8001", name="w1",
                         on_assign=on_assign, on_revoke=on_revoke)
    worker.install_signal_handlers()
    await worker.run()   # returns after a graceful shutdown
    """

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        name: str,
        on_assign: Callback,
        on_revoke: Callback,
        capacity: int = 20,
        labels: Mapping[str, str] | None = None,
        address: str | None = None,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        request_timeout: float = 5.0,
        long_poll_wait: float = 20.0,
        fence_margin: float | None = None,
        jitter: float = 0.1,
        max_backoff: float = 5.0,
        drain_timeout: float = 60.0,
        metrics: MetricsSource | None = None,
        secret_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.labels = dict(labels or {})
        self.address = address
        self.long_poll_wait = long_poll_wait
        self.jitter = jitter
        self.max_backoff = max_backoff
        self.drain_timeout = drain_timeout
        self._fence_margin = fence_margin
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._metrics = metrics
        self._conn = Connection(
            servers,
            token=token,
            client=client,
            transport=transport,
            timeout=request_timeout,
            secret_file=secret_file,
        )

        self.registration: Registration | None = None
        self.heartbeat_interval = 2.0
        self.lease_ttl = 10.0
        self.version = -1  # the version the running set reflects (applied)
        self.draining = False
        self.fenced = False
        # The server's lease deadline from the last renewal (its clock), for observers.
        self.lease_expires_at: datetime | None = None
        # Counters, also sent as heartbeat metrics.
        self.registrations = 0
        self.fences = 0
        self.conflicts = 0
        self.heartbeats = 0
        self.callback_errors = 0

        self._epoch = 0  # grows with each registration: older answers are dropped
        self._offered = -1  # the highest version handed to converge
        self._target: dict[str, Assignment] = {}
        self._target_version = -1
        self._target_seq = 0
        self._running: dict[str, Assignment] = {}
        self._starting: set[str] = set()
        self._stopping: set[str] = set()
        self._last_renewal: float | None = None  # monotonic send time of the last renewal
        self._dirty = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake_heartbeat = asyncio.Event()
        self._shutdown_requested = asyncio.Event()
        self._hurry = asyncio.Event()
        self._fatal: BaseException | None = None
        self._failed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._converger: asyncio.Task[None] | None = None
        self._closed = False

    # -- what the worker runs ---------------------------------------------------------
    @property
    def worker_id(self) -> str | None:
        return self.registration.worker_id if self.registration else None

    @property
    def incarnation(self) -> int | None:
        return self.registration.incarnation if self.registration else None

    @property
    def running(self) -> dict[str, Assignment]:
        """Streams whose `on_assign` returned and whose `on_revoke` has not been called."""
        return dict(self._running)

    @property
    def desired(self) -> dict[str, Assignment]:
        """The newest desired set handed to the callbacks (empty while fenced)."""
        return dict(self._target)

    @property
    def fence_margin(self) -> float:
        if self._fence_margin is not None:
            return self._fence_margin
        return 0.25 * self.lease_ttl

    @property
    def server(self) -> str:
        """The base URL requests currently go to."""
        return self._conn.base_url

    def reported(self) -> list[str]:
        """What a heartbeat reports as running: started, starting or stopping."""
        return sorted(set(self._running) | self._starting | self._stopping)

    # -- life cycle -------------------------------------------------------------------
    async def __aenter__(self) -> AsyncWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Register (retrying until a server answers) and start the background tasks."""
        if self._tasks:
            return
        self._converger = asyncio.create_task(self._converge_loop(), name=f"{self.name}-converge")
        try:
            await self._register()
        except BaseException:
            await self.stop()
            raise
        for loop, what in (
            (self._heartbeat_loop, "heartbeat"),
            (self._long_poll_loop, "long-poll"),
            (self._fence_loop, "fence"),
        ):
            self._tasks.append(asyncio.create_task(self._guard(loop), name=f"{self.name}-{what}"))

    async def run(self) -> None:
        """Start, then work until a shutdown is requested; a fatal error is re-raised."""
        await self.start()
        shutdown = asyncio.create_task(self._shutdown_requested.wait())
        failed = asyncio.create_task(self._failed.wait())
        try:
            await asyncio.wait({shutdown, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            shutdown.cancel()
            failed.cancel()
        if self._fatal is not None:
            await self.stop()
            raise self._fatal
        await self.shutdown()

    def request_shutdown(self) -> None:
        """Ask `run()` to drain and leave; a second request stops waiting for the drain."""
        if self._shutdown_requested.is_set():
            self._hurry.set()
        self._shutdown_requested.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT call `request_shutdown()` (main thread, running loop)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Drain, wait until every stream moved away, stop the rest, deregister, close."""
        if self._closed:
            return
        limit = self.drain_timeout if timeout is None else timeout
        if self.registration is None or not self._tasks:
            await self.stop()
            return
        self.draining = True
        log.info("draining", extra={"action": "drain", "worker": self.name})
        with contextlib.suppress(errors.ClientError):
            await self._conn.request("POST", f"/v1/workers/{self.worker_id}/drain")
        self._wake_heartbeat.set()
        deadline = time.monotonic() + limit
        while (self._target or self.reported()) and time.monotonic() < deadline:
            if self._hurry.is_set():
                break
            await asyncio.sleep(0.05)
        moved = not (self._target or self.reported())
        if not moved:
            log.warning(
                "drain incomplete: stopping the remaining streams",
                extra={"action": "drain_timeout", "worker": self.name, "left": self.reported()},
            )
        await self._cancel_network()
        await self._converge_to({}, self.version)
        with contextlib.suppress(errors.ClientError):
            await self._heartbeat_once()  # report the empty set: moves finish on it
        await self._deregister(deadline)
        await self.stop()

    async def stop(self) -> None:
        """Stop every stream now and close, without telling the server (a crash stop)."""
        if self._closed:
            return
        await self._cancel_network()
        if self._converger is not None and not self._converger.done():
            await self._converge_to({}, self.version)
            self._converger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._converger
        self._closed = True
        await self._conn.aclose()

    async def _cancel_network(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _guard(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a fatal error: run() stops the worker and re-raises
            log.error("worker failed: %s", exc, extra={"action": "fatal", "worker": self.name})
            self._fatal = exc
            self._failed.set()

    # -- registration -----------------------------------------------------------------
    async def _register(self) -> None:
        body = {
            "name": self.name,
            "capacity": self.capacity,
            "labels": self.labels,
            "address": self.address,
        }
        attempt = 0
        while True:
            sent = time.monotonic()
            try:
                data = await self._conn.request("POST", "/v1/workers/register", json=body)
            except errors.TransportError as exc:
                log.warning("cannot register: %s", exc, extra={"action": "register_retry"})
            except errors.APIError as exc:
                if not (exc.retryable or exc.name_in_use):
                    raise
                log.warning("cannot register: %s", exc, extra={"action": "register_retry"})
            else:
                self._epoch += 1
                self._conn.remember_secret(data.get("secret"))
                self.registration = Registration.from_json(data)
                self.heartbeat_interval = self.registration.heartbeat_interval_s
                self.lease_ttl = self.registration.lease_ttl_s
                self.registrations += 1
                self.version = -1
                self._offered = -1
                self._last_renewal = sent
                self.fenced = False
                log.info(
                    "registered",
                    extra={
                        "action": "registered",
                        "worker": self.name,
                        "worker_id": self.worker_id,
                        "incarnation": self.incarnation,
                    },
                )
                self._wake_heartbeat.set()
                return
            attempt += 1
            await asyncio.sleep(self._backoff(attempt))

    async def _reregister(self, exc: errors.APIError) -> None:
        """409 or 404: stop everything first (another worker may own it now), then join."""
        self.conflicts += 1
        log.warning(
            "fenced by the server: stopping every stream and registering again",
            extra={"action": "reregister", "worker": self.name, "code": exc.code},
        )
        self._epoch += 1  # answers in flight belong to the old registration
        await self._converge_to({}, -1)
        await self._register()

    async def _deregister(self, deadline: float) -> None:
        path = f"/v1/workers/{self.worker_id}"
        while True:
            force = time.monotonic() >= deadline or self._hurry.is_set()
            try:
                await self._conn.request("DELETE", path, params={"force": str(force).lower()})
            except errors.APIError as exc:
                if exc.status == 404:
                    return
                if exc.code != "worker_owns_streams" and not exc.retryable:
                    log.warning("cannot deregister: %s", exc, extra={"action": "deregister"})
                    return
            except errors.TransportError as exc:
                if force:
                    log.warning("cannot deregister: %s", exc, extra={"action": "deregister"})
                    return
            else:
                log.info("deregistered", extra={"action": "deregistered", "worker": self.name})
                return
            await asyncio.sleep(0.1)

    # -- heartbeats -------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter on the upper half."""
        cap = min(self.max_backoff, 0.05 * 2 ** min(attempt, 16))
        return cap / 2 + random.random() * cap / 2  # noqa: S311 - jitter, not secrecy

    def _body(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "running": len(self._running),
            "fences": self.fences,
            "registrations": self.registrations,
            "callback_errors": self.callback_errors,
        }
        if self._metrics is not None:
            metrics.update(self._metrics())
        assert self.registration is not None
        return {
            "incarnation": self.registration.incarnation,
            "running": self.reported(),
            "status": "draining" if self.draining else "active",
            "version": self.version if self.version >= 0 else None,
            "metrics": metrics,
        }

    async def _heartbeat_once(self) -> None:
        """One heartbeat; applies its answer. Raises `ClientError` when it failed."""
        epoch = self._epoch
        body = self._body()
        sent = time.monotonic()
        data = await self._conn.request(
            "POST", f"/v1/workers/{self.worker_id}/heartbeat", json=body
        )
        if epoch != self._epoch:
            return
        self.heartbeats += 1
        self._last_renewal = max(sent, self._last_renewal or sent)
        if self.fenced and time.monotonic() < sent + self.lease_ttl - self.fence_margin:
            log.info("lease renewed again", extra={"action": "unfenced", "worker": self.name})
            self.fenced = False
        desired = Desired.from_json(data)
        self.lease_expires_at = desired.lease_expires_at
        self._offer(desired, epoch)

    async def _heartbeat_loop(self) -> None:
        failures = 0
        while True:
            self._wake_heartbeat.clear()
            try:
                await self._heartbeat_once()
            except errors.APIError as exc:
                if exc.fenced:
                    await self._reregister(exc)
                    failures = 0
                    continue
                if not exc.retryable:
                    raise
                failures += 1
            except errors.TransportError as exc:
                failures += 1
                log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat_failed"})
            else:
                failures = 0
            if failures:
                delay = min(self._backoff(failures), self.heartbeat_interval)
            else:
                spread = 1 + self.jitter * (2 * random.random() - 1)  # noqa: S311
                delay = self.heartbeat_interval * spread
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_heartbeat.wait(), delay)

    async def _long_poll_loop(self) -> None:
        failures = 0
        while True:
            epoch = self._epoch
            params = {"version": max(self._offered, 0), "wait": self.long_poll_wait}
            try:
                data = await self._conn.request(
                    "GET",
                    f"/v1/workers/{self.worker_id}/assignments",
                    params=params,
                    timeout=self.long_poll_wait + self._conn.timeout,
                )
            except errors.APIError as exc:
                if not (exc.fenced or exc.retryable):
                    raise
                if exc.fenced:
                    self._wake_heartbeat.set()  # the heartbeat loop registers again
                failures += 1
                await asyncio.sleep(max(self._backoff(failures), 0.1))
                continue
            except errors.TransportError:
                failures += 1
                await asyncio.sleep(self._backoff(failures))
                continue
            failures = 0
            if not self._offer(Desired.from_json(data), epoch) and epoch == self._epoch:
                # Nothing new for us (fenced, or an answer for another incarnation): do
                # not spin on an answer that returns at once.
                await asyncio.sleep(min(0.2, self.heartbeat_interval))

    async def _fence_loop(self) -> None:
        while True:
            await asyncio.sleep(min(0.05, self.lease_ttl / 20))
            renewed = self._last_renewal
            if self.fenced or renewed is None:
                continue
            if time.monotonic() >= renewed + self.lease_ttl - self.fence_margin:
                self.fenced = True
                self.fences += 1
                log.warning(
                    "lease not renewed in time: stopping every stream (self-fencing)",
                    extra={"action": "self_fenced", "worker": self.name},
                )
                self._set_target({}, self.version)

    # -- converging -------------------------------------------------------------------
    def _offer(self, desired: Desired, epoch: int) -> bool:
        """Hand a desired set to converge unless it is stale; True if it was taken."""
        if epoch != self._epoch or self.fenced or self._closed:
            return False
        if desired.incarnation is not None and desired.incarnation != self.incarnation:
            return False
        if desired.version < self._offered:
            return False
        if desired.heartbeat_interval_s:
            self.heartbeat_interval = float(desired.heartbeat_interval_s)
        self._offered = desired.version
        self._set_target(desired.assignments, desired.version)
        return True

    def _set_target(self, target: dict[str, Assignment], version: int) -> None:
        self._target = dict(target)
        self._target_version = version
        self._target_seq += 1
        self._idle.clear()
        self._dirty.set()

    async def _converge_to(self, target: dict[str, Assignment], version: int) -> None:
        self._set_target(target, version)
        await self._idle.wait()

    async def _converge_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            seq, target, version = self._target_seq, self._target, self._target_version
            stops = [a for key, a in self._running.items() if key not in target]
            for key, assignment in target.items():
                if key in self._running:
                    self._running[key] = assignment  # a new token for a kept stream
            if stops:
                self._stopping.update(a.stream for a in stops)
                await asyncio.gather(*(self._call_revoke(a) for a in stops))
                self._wake_heartbeat.set()  # moves finish on the stop report
            if seq != self._target_seq:
                continue  # a newer set arrived meanwhile: start from it
            starts = [a for key, a in target.items() if key not in self._running]
            if starts:
                self._starting.update(a.stream for a in starts)
                await asyncio.gather(*(self._call_assign(a) for a in starts))
            if seq == self._target_seq:
                self.version = version
                self._idle.set()

    async def _call_assign(self, assignment: Assignment) -> None:
        try:
            await _call(self._on_assign, assignment)
        except Exception:
            self.callback_errors += 1
            log.exception(
                "on_assign failed; retried with the next answer",
                extra={"action": "assign_failed", "stream": assignment.stream},
            )
        else:
            self._running[assignment.stream] = assignment
        finally:
            self._starting.discard(assignment.stream)

    async def _call_revoke(self, assignment: Assignment) -> None:
        try:
            await _call(self._on_revoke, assignment)
        except Exception:
            self.callback_errors += 1
            log.exception(
                "on_revoke failed; the stream is taken as stopped",
                extra={"action": "revoke_failed", "stream": assignment.stream},
            )
        finally:
            self._running.pop(assignment.stream, None)
            self._stopping.discard(assignment.stream)


async def _call(callback: Callback, assignment: Assignment) -> None:
    result = callback(assignment)
    if inspect.isawaitable(result):
        await result
