"""`Worker`: the blocking face of `AsyncWorker`, for programs without an event loop.

`run()` owns an event loop in the calling thread (normally the main thread) until a
graceful shutdown; the callbacks are plain functions and run in a thread pool, so a slow
`on_revoke` never delays a heartbeat. `request_shutdown()` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from streamorch.client.models import Assignment
from streamorch.client.worker import AsyncWorker, MetricsSource

SyncCallback = Callable[[Assignment], None]


class Worker:
    """Blocking worker: `Worker(url, name=..., on_assign=f, on_revoke=g).run()`."""

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        name: str,
        on_assign: SyncCallback,
        on_revoke: SyncCallback,
        capacity: int = 20,
        labels: Mapping[str, str] | None = None,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: MetricsSource | None = None,
        **options: Any,
    ) -> None:
        self._options = dict(
            servers=servers,
            name=name,
            capacity=capacity,
            labels=labels,
            token=token,
            transport=transport,
            metrics=metrics,
            **options,
        )
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async: AsyncWorker | None = None
        self._ready = threading.Event()
        self._pending_shutdown = False

    @property
    def worker(self) -> AsyncWorker | None:
        """The underlying `AsyncWorker` while `run()` runs."""
        return self._async

    def running(self) -> dict[str, Assignment]:
        return self._async.running if self._async else {}

    def run(self, *, handle_signals: bool = True) -> None:
        """Work until SIGTERM/SIGINT (with `handle_signals`) or `request_shutdown()`."""
        asyncio.run(self._main(handle_signals))

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

        worker = AsyncWorker(on_assign=assign, on_revoke=revoke, **self._options)
        self._async = worker
        self._loop = asyncio.get_running_loop()
        if handle_signals:
            worker.install_signal_handlers()
        if self._pending_shutdown:
            worker.request_shutdown()
        await worker.start()
        self._ready.set()
        await worker.run()
