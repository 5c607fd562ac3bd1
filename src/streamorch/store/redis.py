"""Wake long-polls within ~100 ms when a worker's desired set changes, across replicas (the
engine's Notifier port, core/ports.py, on PostgreSQL LISTEN/NOTIFY and Redis pub/sub).

Changes are announced twice: `pg_notify` inside the transaction that made them
(delivered at commit, so never before the change is visible) and a Redis publish
after commit. Each server process listens on both and wakes its local waiters;
a duplicate wake-up is harmless because waiters re-read the version. With Redis
down, PostgreSQL notifications alone keep long-polls prompt; with both listeners
down, long-polls still return at their timeout and heartbeats carry the full set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable

import psycopg
import redis.asyncio as aioredis

from streamorch.store.keys import NOTIFY_CHANNEL, REDIS_CHANNEL

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, conninfo: str, redis: aioredis.Redis | None) -> None:
        self._conninfo = conninfo
        self._redis = redis
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = {"postgresql": False, "redis": False}
        # Notifications received per source: lets health and tests see which path works.
        self.received = {"postgresql": 0, "redis": 0}
        self.closing = False

    # -- local waiters ---------------------------------------------------------
    @contextlib.asynccontextmanager
    async def subscription(self, worker_id: str) -> AsyncIterator[asyncio.Event]:
        """Register before reading the version, so no change can slip in between."""
        event = asyncio.Event()
        if self.closing:  # shutting down: answer now instead of holding the request
            event.set()
        self._waiters[worker_id].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(worker_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[worker_id]

    def release_all(self) -> None:
        """Shutdown: let every long-poll answer now, so in-flight requests end promptly."""
        self.closing = True
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    def dispatch(self, worker_ids: Iterable[str]) -> None:
        for worker_id in worker_ids:
            for event in self._waiters.get(worker_id, ()):
                event.set()

    # -- fan-out ---------------------------------------------------------------
    async def publish(self, worker_ids: set[str]) -> None:
        """Wake local waiters now and other replicas through Redis (best effort)."""
        if not worker_ids:
            return
        self.dispatch(worker_ids)
        if self._redis is None:
            return
        try:
            await self._redis.publish(REDIS_CHANNEL, ",".join(sorted(worker_ids)))
        except (aioredis.RedisError, OSError):
            log.debug("Redis publish failed; PostgreSQL notifications still deliver")

    # -- listeners -------------------------------------------------------------
    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._listen_postgres(), name="notify-pg"))
        if self._redis is not None:
            self._tasks.append(asyncio.create_task(self._listen_redis(), name="notify-redis"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def _listen_postgres(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening["postgresql"] = True
                    delay = 0.5
                    async for notice in conn.notifies():
                        self.received["postgresql"] += 1
                        self.dispatch(notice.payload.split(","))
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.warning(
                    "PostgreSQL notification listener lost: %s; retrying",
                    exc,
                    extra={"action": "notify_listener_lost", "service": "postgresql"},
                )
            self.listening["postgresql"] = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _listen_redis(self) -> None:
        assert self._redis is not None
        delay = 0.5
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(REDIS_CHANNEL)
                self.listening["redis"] = True
                delay = 0.5
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.received["redis"] += 1
                        data = message["data"]
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        self.dispatch(text.split(","))
            except asyncio.CancelledError:
                raise
            except (aioredis.RedisError, OSError) as exc:
                log.debug("Redis notification listener lost: %s", exc)
            finally:
                self.listening["redis"] = False
                with contextlib.suppress(Exception):
                    # redis-py leaves PubSub.aclose unannotated (Redis.aclose is typed).
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
