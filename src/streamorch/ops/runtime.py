"""The composition root: everything one API process runs, built and started in one place.

`Runtime.build` creates the parts (settings, the optional modules, the PostgreSQL pool,
the Redis client); `start` connects, builds the orchestrator and its monitors; `stop`
closes them in the reverse order. The API's lifespan only calls these, and request
handlers read the runtime through `api/deps.py`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from streamorch.backing import endpoints
from streamorch.backing.endpoints import RedisTarget
from streamorch.config import Settings
from streamorch.core.service import Orchestrator
from streamorch.domain.errors import ServiceError
from streamorch.ops import wiring
from streamorch.ops.health import ServiceMonitor, start_monitors, stop_monitors
from streamorch.ops.modules import ModuleStatus, load_optional
from streamorch.ops.startup import StartupReport
from streamorch.store.clients import RedisClient, connect_redis
from streamorch.store.database import DatabaseManager

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a request handler may use: built by `build`, run by `start` and `stop`."""

    settings: Settings
    db: DatabaseManager
    redis: RedisClient | None
    redis_target: RedisTarget | None
    startup: StartupReport
    modules: dict[str, ModuleType | None] = field(default_factory=dict)
    module_status: dict[str, ModuleStatus] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False
    orchestrator: Orchestrator | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    monitors: dict[str, ServiceMonitor] = field(default_factory=dict)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def build(cls, settings: Settings, startup: StartupReport | None = None) -> Runtime:
        """The parts, not yet connected: a Redis that cannot be configured is logged, not fatal."""
        modules, module_status = load_optional()
        db = DatabaseManager(endpoints.postgres_target(settings), settings)
        redis_client, redis_target = None, None
        try:
            redis_target = endpoints.redis_target(settings)
            redis_client = connect_redis(redis_target.url)
        except ServiceError as exc:
            log.warning(
                "Redis unavailable: %s",
                exc.problem.message,
                extra={"action": "redis_unavailable", "fix": exc.problem.fix},
            )
        return cls(
            settings,
            db,
            redis_client,
            redis_target,
            startup or StartupReport(),
            modules,
            module_status,
        )

    async def start(self, wire: Callable[[Orchestrator], None] | None = None) -> None:
        """Connect, then start the orchestrator (after `wire` adds its observers) and monitors."""
        settings, db, redis_client = self.settings, self.db, self.redis
        await db.connect_with_retry()
        self.orchestrator = wiring.build_orchestrator(settings, db, redis_client)
        if wire is not None:
            wire(self.orchestrator)
        await self.orchestrator.start()
        self.monitors = start_monitors(db, redis_client, self.redis_target)
        # Back from an outage: connect and run a pass now rather than when the back-offs end
        # (a worker that died during the outage fails over a lease after the first pass).
        self.monitors["postgresql"].on_recovery.append(self._reconnect)
        self.monitors["postgresql"].on_recovery.append(self.orchestrator.reconciler.wake)
        # What start-up built lives as long as the process: out of the collector's
        # sight, a full collection scans only what requests create (a few ms, not
        # ~80 ms with the loop held: docs/decisions/0025-no-request-stalls-the-loop.md).
        gc.freeze()
        self.ready = True

    def _reconnect(self) -> None:
        task = asyncio.get_running_loop().create_task(self.db.reconnect_now())
        self._background.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """Stop whatever `start` got to, in the reverse order; safe after a failed start."""
        self.ready = False
        gc.unfreeze()  # what stops now may be collected (tests start many apps)
        await stop_monitors(self.monitors)
        if self.orchestrator is not None:
            await self.orchestrator.stop()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.close_connection_safely()
