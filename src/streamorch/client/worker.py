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
`drain_timeout`), stops whatever is left, reports it, and deregisters. From its first
step on, answers may only take streams away: a stream stopped by the drain is never
started again. A second request stops waiting ("stop now"): what still runs is stopped
at once and `interrupted` becomes true. A request that arrives before the worker has
registered (say, while the server is unreachable) ends `run()` at once.

Each heartbeat names the desired-set version whose stops its `running` list reflects:
0 until the first answer was applied (versions start at 1), so a report sent before
then never finishes a move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from streamorch.client import errors, lease, membership
from streamorch.client.converge import Callback, Converger
from streamorch.client.http import Connection
from streamorch.client.models import Assignment, Desired, Registration
from streamorch.client.options import check_worker_options, quiet_request_logs
from streamorch.client.signals import SignalHandlers
from streamorch.client.tasks import cancel_all, unless_set, wait_event

log = logging.getLogger(__name__)

__all__ = ["AsyncWorker", "Callback", "MetricsSource", "check_worker_options"]

MetricsSource = Callable[[], Mapping[str, Any]]


class AsyncWorker:
    """A worker process's connection to the orchestrator; see the module docstring.

        async def on_assign(stream: Assignment) -> None: ...  # start it; use stream.token
        async def on_revoke(stream: Assignment) -> None: ...  # stop it before returning

        worker = AsyncWorker("http://orchestrator:8001", name="w1",
                             on_assign=on_assign, on_revoke=on_revoke)
        worker.install_signal_handlers()
        await worker.run()   # returns after a graceful shutdown

    Args:
        servers: The orchestrator's base URL (`http://host:8001`, no path), several as a
            list or comma-separated string (tried in turn); default `http://127.0.0.1:8001`.
            A URL without `http://` or `https://` raises `ValueError` here.
        name: The worker's unique name. Registering again under the same name (a restart)
            fences the previous incarnation.
        on_assign: Called with each granted stream; start it, then return. A plain function
            or a coroutine function. An exception counts as "not started", and the stream
            is tried again with the next answer.
        on_revoke: Called with each stream to stop; return only once it has stopped (the
            stream may start elsewhere right after). An exception counts as stopped.
        capacity: Capacity units this worker offers (a stream costs its `weight`).
        labels: Labels that streams' `requires` selectors match against.
        address: Optional `host:port` shown to operators.
        token: API token sent as `Authorization: Bearer` (the worker token or the admin
            token), when the server has tokens configured.
        client: A ready `httpx.AsyncClient` to use instead of creating one (not closed).
        transport: An httpx transport for the clients this worker creates (tests).
        request_timeout: Seconds each request may take before it counts as failed.
        long_poll_wait: Seconds a long-poll waits for a change (at most 30).
        fence_margin: Seconds before the lease ends at which the worker stops everything
            when it could not renew it; default a quarter of the lease.
        jitter: Relative spread of the heartbeat interval (0.1 = ±10 %).
        max_backoff: Longest wait, in seconds, between retries of a failed request.
        drain_timeout: On shutdown, seconds to wait for the streams to move away before
            stopping those left.
        metrics: Returns extra numbers to send with each heartbeat.
        secret_file: A file (kept 0600) that holds this worker's secret, so a restarted
            process proves it is the same worker and keeps its streams (static membership).
        log_requests: Let httpx log every request at INFO (off: only this worker's own
            lines — registrations, starts, stops, fencing, errors — are logged).
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
        log_requests: bool = False,
        secret_file: str | os.PathLike[str] | None = None,
    ) -> None:
        check_worker_options(name, capacity, on_assign, on_revoke)
        self.name = name
        self.capacity = capacity
        self.labels = dict(labels or {})
        self.address = address
        self.long_poll_wait = long_poll_wait
        self.jitter = jitter
        self.max_backoff = max_backoff
        self.drain_timeout = drain_timeout
        self._fence_margin = fence_margin
        self._metrics = metrics
        if not log_requests:
            quiet_request_logs()
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
        self.draining = False
        self.fenced = False
        # Set by shutdown(): True when every stream moved away before the worker left;
        # False when the drain timed out or was cut short (`interrupted`).
        self.drained: bool | None = None
        self.interrupted = False  # a second shutdown request stopped the drain
        # The server's lease deadline from the last renewal (its clock), for observers.
        self.lease_expires_at: datetime | None = None
        # Counters, also sent as heartbeat metrics.
        self.registrations = 0
        self.fences = 0
        self.conflicts = 0
        self.heartbeats = 0

        self._epoch = 0  # grows with each registration: older answers are dropped
        self._offered = -1  # the highest version handed to converge
        self._granted: set[str] = set()  # the server's newest set, before any filtering
        self._last_renewal: float | None = None  # monotonic send time of the last renewal
        self._wake_heartbeat = asyncio.Event()
        self._conv = Converger(on_assign, on_revoke, on_stopped=self._wake_heartbeat.set)
        self._registered = asyncio.Event()  # set by the first registration
        self._shutdown_requested = asyncio.Event()
        self._hurry = asyncio.Event()
        self._leaving = False  # shutdown began: answers may only take streams away
        self._fatal: BaseException | None = None
        self._failed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._converger: asyncio.Task[None] | None = None
        self._signals = SignalHandlers()
        self._closed = False
        # Seams for tests: the lease clock (monotonic seconds) and the jitter source.
        self._clock: Callable[[], float] = time.monotonic
        self._random: Callable[[], float] = random.random

    # -- what the worker runs ---------------------------------------------------------
    @property
    def worker_id(self) -> str | None:
        """The server's id for this worker while registered, else None."""
        return self.registration.worker_id if self.registration else None

    @property
    def incarnation(self) -> int | None:
        """The current registration's incarnation number, else None."""
        return self.registration.incarnation if self.registration else None

    @property
    def version(self) -> int:
        """The desired-set version the running streams reflect (-1 before the first)."""
        return self._conv.version

    @property
    def callback_errors(self) -> int:
        """How many `on_assign` / `on_revoke` calls raised."""
        return self._conv.callback_errors

    @property
    def running(self) -> dict[str, Assignment]:
        """Streams whose `on_assign` returned and whose `on_revoke` has not been called.

        Each value carries the stream's current fencing `token`: read it from here (not
        from the first `on_assign`) when writing downstream, since a re-registration
        grants kept streams again with higher tokens.
        """
        return dict(self._conv.running)

    @property
    def desired(self) -> dict[str, Assignment]:
        """The newest desired set handed to the callbacks (empty while fenced)."""
        return dict(self._conv.target)

    @property
    def fence_margin(self) -> float:
        """Seconds before the lease ends at which an unrenewed worker stops everything."""
        if self._fence_margin is not None:
            return self._fence_margin
        return 0.25 * self.lease_ttl

    @property
    def server(self) -> str:
        """The base URL requests currently go to."""
        return self._conn.base_url

    @property
    def stopping_now(self) -> bool:
        """A second shutdown request arrived: stop what runs as fast as possible."""
        return self._hurry.is_set()

    def reported(self) -> list[str]:
        """What a heartbeat reports as running: started, starting or stopping."""
        return self._conv.reported()

    # -- life cycle -------------------------------------------------------------------
    async def __aenter__(self) -> AsyncWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Register (retrying until a server answers) and start the background tasks.

        Raises `APIError` at once when the server refuses the registration for good
        (a 4xx: wrong URL path, missing or wrong token, invalid name or labels).
        """
        if self._tasks:
            return
        self._converger = asyncio.create_task(self._conv.run(), name=f"{self.name}-converge")
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
        """Register, work until a shutdown is requested, then drain and leave.

        A shutdown requested while still registering (for example while no server is
        reachable) returns at once. A fatal error (see `start()`, or a 4xx on a
        heartbeat) stops every stream and is re-raised.
        """
        try:
            if not await self._start_unless_shutdown():
                return
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
        finally:
            self._retire_signal_handlers()

    async def _start_unless_shutdown(self) -> bool:
        """`start()`, abandoned when a shutdown is requested first; True if started."""
        starting = asyncio.create_task(self.start(), name=f"{self.name}-start")
        requested = asyncio.create_task(self._shutdown_requested.wait())
        try:
            await asyncio.wait({starting, requested}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            requested.cancel()
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        if starting.cancelled():
            log.info(
                "stopped before registering",
                extra={"action": "stopped_unregistered", "worker": self.name},
            )
            await self.stop()
            return False
        starting.result()  # a permanent registration error is raised here
        return True

    def request_shutdown(self) -> None:
        """Ask `run()` to drain and leave; a second request stops waiting for the drain."""
        if self._shutdown_requested.is_set():
            if not self._hurry.is_set():
                log.warning(
                    "second stop request: stopping every stream now",
                    extra={"action": "stop_now", "worker": self.name},
                )
            self._hurry.set()
        self._shutdown_requested.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT call `request_shutdown()` (main thread, running loop).

        The first signal drains, a second one stops at once. Once `run()` has returned,
        SIGTERM and SIGINT are ignored (`SIG_IGN`) rather than killing a process that is
        already on its way out. A program that goes on after `run()` (or starts child
        processes then, which would inherit that) calls `restore_signal_handlers()`.
        """
        self._signals.install(self.request_shutdown)

    def restore_signal_handlers(self) -> None:
        """Give SIGTERM and SIGINT their default behaviour back."""
        self._signals.restore()

    def _retire_signal_handlers(self) -> None:
        self._signals.retire()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Drain, wait until every stream moved away, stop the rest, deregister, close.

        Waits at most `timeout` (default `drain_timeout`) for the moves; a second
        `request_shutdown()` ends the wait at once. Never starts a stream again.
        """
        if self._closed:
            return
        limit = self.drain_timeout if timeout is None else timeout
        if self.registration is None or not self._tasks:
            await self.stop()
            return
        self._leaving = True
        self.draining = True
        deadline = time.monotonic() + limit
        log.info("draining", extra={"action": "drain", "worker": self.name})
        await unless_set(self._hurry, self._ask_drain())
        self._wake_heartbeat.set()
        while self._holds_streams() and time.monotonic() < deadline:
            if self._hurry.is_set():
                break
            await wait_event(self._hurry, 0.05)
        self.drained = not self._holds_streams()
        if not self.drained:
            self.interrupted = self._hurry.is_set()
            log.warning(
                "drain %s: stopping the remaining streams",
                "cut short" if self.interrupted else "timed out",
                extra={"action": "drain_incomplete", "worker": self.name, "left": self.reported()},
            )
        await self._cancel_network()
        await self._conv.converge_to({}, self.version)
        with contextlib.suppress(errors.ClientError):
            await self._heartbeat_once()  # report the empty set: moves finish on it
        await self._deregister(deadline)
        await self.stop()

    def _holds_streams(self) -> bool:
        """Something runs here, or the server still grants this worker a stream (one
        that arrived as the drain began is never started, but must still move away).
        While fenced the server's view is unknown: only what runs counts then."""
        return bool(self._conv.target or self.reported() or (self._granted and not self.fenced))

    async def stop(self) -> None:
        """Stop every stream now and close, without telling the server (a crash stop)."""
        if self._closed:
            return
        self._leaving = True
        await self._cancel_network()
        if self._converger is not None and not self._converger.done():
            await self._conv.converge_to({}, self.version)
            self._converger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._converger
        self._closed = True
        await self._conn.aclose()

    async def _ask_drain(self) -> None:
        with contextlib.suppress(errors.ClientError):
            await self._conn.request("POST", f"/v1/workers/{self.worker_id}/drain")

    async def _cancel_network(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)

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
        sent, data = await membership.register(
            self._conn, body, clock=self._clock, backoff=self._backoff
        )
        self._epoch += 1
        self._conn.remember_secret(data.get("secret"))
        self.registration = Registration.from_json(data)
        self.heartbeat_interval = self.registration.heartbeat_interval_s
        self.lease_ttl = self.registration.lease_ttl_s
        self.registrations += 1
        self._conv.version = -1
        self._offered = -1
        self._granted = set()
        self._last_renewal = sent
        self.fenced = False
        self._registered.set()
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

    async def _reregister(self, exc: errors.APIError) -> None:
        """409 or 404: stop everything first (another worker may own it now), then join."""
        self.conflicts += 1
        log.warning(
            "fenced by the server: stopping every stream and registering again",
            extra={"action": "reregister", "worker": self.name, "code": exc.code},
        )
        self._epoch += 1  # answers in flight belong to the old registration
        await self._conv.converge_to({}, -1)
        await self._register()

    async def _deregister(self, deadline: float) -> None:
        """Leave the fleet; waits (until `deadline`) for the last moves to finish."""
        if await membership.deregister(
            self._conn, self.worker_id, deadline=deadline, hurry=self._hurry
        ):
            log.info("deregistered", extra={"action": "deregistered", "worker": self.name})

    # -- heartbeats -------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter on the upper half."""
        return lease.backoff(attempt, self.max_backoff, self._random)

    def _body(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "running": len(self._conv.running),
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
            # 0 until an answer was applied: versions start at 1, so such a report
            # never acknowledges a revoke (and never finishes a move).
            "version": max(self.version, 0),
            "metrics": metrics,
        }

    async def _heartbeat_once(self) -> None:
        """One heartbeat; applies its answer. Raises `ClientError` when it failed."""
        epoch = self._epoch
        body = self._body()
        sent = self._clock()
        data = await self._conn.request(
            "POST", f"/v1/workers/{self.worker_id}/heartbeat", json=body
        )
        if epoch != self._epoch:
            return
        self.heartbeats += 1
        self._last_renewal = max(sent, self._last_renewal or sent)
        if self.fenced and self._clock() < lease.fence_at(sent, self.lease_ttl, self.fence_margin):
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
                spread = 1 + self.jitter * (2 * self._random() - 1)
                delay = self.heartbeat_interval * spread
            await wait_event(self._wake_heartbeat, delay)

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
            if self._clock() >= lease.fence_at(renewed, self.lease_ttl, self.fence_margin):
                self.fenced = True
                self.fences += 1
                log.warning(
                    "lease not renewed in time: stopping every stream (self-fencing)",
                    extra={"action": "self_fenced", "worker": self.name},
                )
                self._conv.set_target({}, self.version)

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
        self._granted = set(desired.assignments)
        assignments = desired.assignments
        if self._leaving:  # shutting down: take streams away, never add or restart one
            assignments = {k: a for k, a in assignments.items() if k in self._conv.target}
        self._conv.set_target(assignments, desired.version)
        return True
