"""The engine's notifier in one process (core.ports.Notifier), for unit tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class MemoryNotifier:
    """core.ports.Notifier in one process: wakes local long-polls; records what it published."""

    def __init__(self) -> None:
        self.published: list[set[str]] = []
        self.listening = {"postgresql": False, "redis": False}
        self.received = {"postgresql": 0, "redis": 0}
        self.closing = False
        self._waiters: dict[str, set[asyncio.Event]] = {}

    @contextlib.asynccontextmanager
    async def subscription(self, worker_id: str) -> AsyncIterator[asyncio.Event]:
        event = asyncio.Event()
        if self.closing:
            event.set()
        self._waiters.setdefault(worker_id, set()).add(event)
        try:
            yield event
        finally:
            self._waiters[worker_id].discard(event)

    async def publish(self, worker_ids: set[str]) -> None:
        if not worker_ids:
            return
        self.published.append(set(worker_ids))
        for worker_id in worker_ids:
            for event in self._waiters.get(worker_id, ()):
                event.set()

    def release_all(self) -> None:
        self.closing = True
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
