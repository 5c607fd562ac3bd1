"""The FastAPI application and the lifespan that owns its resources."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI

from streamorch import __version__
from streamorch.api.metrics import Metrics
from streamorch.config import Settings
from streamorch.core.health import ServiceMonitor, start_monitors, stop_monitors
from streamorch.core.modules import ModuleStatus, load_optional
from streamorch.core.service import Orchestrator
from streamorch.core.startup import StartupReport
from streamorch.domain.errors import ServiceError
from streamorch.ops import wiring
from streamorch.services import endpoints
from streamorch.services.endpoints import RedisTarget
from streamorch.store.database import DatabaseManager

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a request handler may use, created by the lifespan."""

    settings: Settings
    db: DatabaseManager
    redis: aioredis.Redis | None
    redis_target: RedisTarget | None
    startup: StartupReport
    modules: dict[str, ModuleType | None] = field(default_factory=dict)
    module_status: dict[str, ModuleStatus] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False
    orchestrator: Orchestrator | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    metrics: Metrics | None = None
    monitors: dict[str, ServiceMonitor] = field(default_factory=dict)


def create_app(settings: Settings, startup: StartupReport | None = None) -> FastAPI:
    metrics = Metrics()  # one registry per app: apps (and tests) never share series

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        modules, module_status = load_optional()
        db = DatabaseManager(endpoints.postgres_target(settings), settings)
        redis_client, redis_target = None, None
        try:
            redis_target = endpoints.redis_target(settings)
            redis_client = aioredis.Redis.from_url(
                redis_target.url,
                socket_connect_timeout=2,
                socket_timeout=2,
                health_check_interval=10,
            )
        except ServiceError as exc:
            log.warning(
                "Redis unavailable: %s",
                exc.problem.message,
                extra={"action": "redis_unavailable", "fix": exc.problem.fix},
            )
        runtime = Runtime(
            settings,
            db,
            redis_client,
            redis_target,
            startup or StartupReport(),
            modules,
            module_status,
            metrics=metrics,
        )
        app.state.runtime = runtime
        try:
            await db.connect_with_retry()
            runtime.orchestrator = wiring.build_orchestrator(settings, db, redis_client)
            runtime.orchestrator.retention.observers.append(metrics.observe_retention)
            runtime.orchestrator.reconciler.observers.append(metrics.observe_pass)
            runtime.orchestrator.loop_lag.observers.append(metrics.observe_loop_lag)
            await runtime.orchestrator.start()
            runtime.monitors = start_monitors(db, redis_client, redis_target)
            # Back from an outage: run a pass now rather than when the backoff ends.
            runtime.monitors["postgresql"].on_recovery.append(runtime.orchestrator.reconciler.wake)
            runtime.ready = True
            yield
        finally:
            runtime.ready = False
            await stop_monitors(runtime.monitors)
            if runtime.orchestrator is not None:
                await runtime.orchestrator.stop()
            if redis_client is not None:
                await redis_client.aclose()
            await db.close_connection_safely()

    app = FastAPI(
        title="Stream Orchestrator",
        version=__version__,
        summary="Keeps every enabled stream running on exactly one healthy worker.",
        lifespan=lifespan,
    )
    from streamorch.api import errors, limits, middleware, openapi, ui
    from streamorch.api.routes import cluster, compat, fleet, health, streams, workers

    errors.install(app)
    openapi.install(app, workers.heartbeat_route)
    app.add_middleware(limits.BodySizeLimit)
    app.add_middleware(middleware.RequestContext, metrics=metrics)
    for module in (health, streams, workers, fleet, cluster, compat):
        app.include_router(module.router)
    ui.install(app)  # the dashboard at /ui (and / redirecting there)
    # Routes are matched in order, and heartbeats are nearly all the traffic.
    app.router.routes.insert(0, workers.heartbeat_route)
    return app
