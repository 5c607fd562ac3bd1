"""`Worker`: the blocking face of `AsyncWorker`, for programs without an event loop.

`run()` owns an event loop in the calling thread (normally the main thread) until a
graceful shutdown; the callbacks are plain functions and run in a thread pool, so a slow
`on_revoke` never delays a heartbeat. `request_shutdown()` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping, Sequence

import httpx

from streamorch.client.http import split_servers
from streamorch.client.models import Assignment
from streamorch.client.worker import AsyncWorker, MetricsSource, check_worker_options

SyncCallback = Callable[[Assignment], None]


class Worker:
    """Blocking worker: `Worker(url, name=..., on_assign=f, on_revoke=g).run()`.

        def on_assign(stream: Assignment) -> None: ...  # start it; use stream.token
        def on_revoke(stream: Assignment) -> None: ...  # stop it before returning

        Worker("http://orchestrator:8001", name="w1",
               on_assign=on_assign, on_revoke=on_revoke).run()

    The parameters are those of `AsyncWorker`, which documents them in full; here the
    callbacks are plain functions, each called in a worker thread.

    Args:
        servers: The orchestrator's base URL(s), `http://host:8001` (no path).
        name: The worker's unique name; a restart under it fences the old incarnation.
        on_assign: Start the stream, then return (`stream.token` is its fencing token).
        on_revoke: Stop the stream; return only once it stopped.
        capacity: Capacity units offered (a stream costs its `weight`).
        labels: Labels that streams' `requires` selectors match.
        address: Optional `host:port` shown to operators.
        token: The worker token (or the admin token) when the server requires one.
        transport: An httpx transport (tests).
        request_timeout: Seconds per request.
        long_poll_wait: Seconds a long-poll waits for a change.
        fence_margin: Seconds before the lease ends at which an unrenewed worker stops
            everything (default a quarter of the lease).
        jitter: Relative spread of the heartbeat interval.
        max_backoff: Longest wait between retries.
        drain_timeout: On shutdown, seconds to wait for the streams to move away.
        metrics: Returns extra numbers for each heartbeat.
        secret_file: A file (kept 0600) that holds this worker's secret, so a restarted
            process proves it is the same worker and keeps its streams.
        log_requests: Let httpx log each request (off by default).
    """

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        name: str,
        on_assign: SyncCallback,
        on_revoke: SyncCallback,
        capacity: int = 20,
        labels: Mapping[str, str] | None = None,
        address: str | None = None,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        request_timeout: float = 5.0,
        long_poll_wait: float = 20.0,
        fence_margin: float | None = None,
        jitter: float = 0.1,
        max_backoff: float = 5.0,
        drain_timeout: float = 60.0,
        metrics: MetricsSource | None = None,
        secret_file: str | os.PathLike[str] | None = None,
        log_requests: bool = False,
    ) -> None:
        check_worker_options(name, capacity, on_assign, on_revoke)
        split_servers(servers)  # a URL that can never work fails here, not inside run()
        self._options = {
            "servers": servers,
            "name": name,
            "capacity": capacity,
            "labels": labels,
            "address": address,
            "token": token,
            "transport": transport,
            "request_timeout": request_timeout,
            "long_poll_wait": long_poll_wait,
            "fence_margin": fence_margin,
            "jitter": jitter,
            "secret_file": secret_file,
            "max_backoff": max_backoff,
            "drain_timeout": drain_timeout,
            "metrics": metrics,
            "log_requests": log_requests,
        }
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async: AsyncWorker | None = None
        self._ready = threading.Event()
        self._pending_shutdown = False

    @property
    def worker(self) -> AsyncWorker | None:
        """The underlying `AsyncWorker` while `run()` runs (and after it returned)."""
        return self._async

    @property
    def interrupted(self) -> bool:
        """True when a second shutdown request cut the drain short."""
        return self._async.interrupted if self._async else False

    def running(self) -> dict[str, Assignment]:
        """The streams running now, each with its current fencing token."""
        return self._async.running if self._async else {}

    def run(self, *, handle_signals: bool = True) -> None:
        """Work until SIGTERM/SIGINT (with `handle_signals`) or `request_shutdown()`.

        The first signal drains and returns; a second one stops every stream at once.
        A fatal error (for example a wrong token) is raised as `APIError`.
        """
        asyncio.run(self._main(handle_signals))

    def restore_signal_handlers(self) -> None:
        """After `run()`: give SIGTERM and SIGINT their default behaviour back (they are
        ignored once `run()` returned, so a late second signal cannot kill the exit)."""
        if self._async is not None:
            self._async.restore_signal_handlers()

    def request_shutdown(self) -> None:
        """Drain and leave; safe from any thread, also before `run()` started."""
        loop, worker = self._loop, self._async
        if loop is None or worker is None:
            self._pending_shutdown = True
            return
        loop.call_soon_threadsafe(worker.request_shutdown)

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until `run()` registered (True) or `timeout` passed (False)."""
        return self._ready.wait(timeout)

    async def _main(self, handle_signals: bool) -> None:
        async def assign(stream: Assignment) -> None:
            await asyncio.to_thread(self._on_assign, stream)

        async def revoke(stream: Assignment) -> None:
            await asyncio.to_thread(self._on_revoke, stream)

        worker = AsyncWorker(on_assign=assign, on_revoke=revoke, **self._options)  # type: ignore[arg-type]
        self._async = worker
        self._loop = asyncio.get_running_loop()
        if handle_signals:
            worker.install_signal_handlers()
        if self._pending_shutdown:
            worker.request_shutdown()

        async def announce() -> None:
            await worker._registered.wait()
            self._ready.set()

        announcer = asyncio.create_task(announce())
        try:
            await worker.run()
        finally:
            announcer.cancel()
