"""The FastAPI application and the lifespan that owns its resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from streamorch import __version__
from streamorch.api import errors, limits, middleware, openapi, ui
from streamorch.api.metrics import Metrics
from streamorch.api.routes import cluster, compat, fleet, health, streams, workers
from streamorch.config import Settings
from streamorch.core.service import Orchestrator
from streamorch.ops.runtime import Runtime
from streamorch.ops.startup import StartupReport

log = logging.getLogger(__name__)


def create_app(settings: Settings, startup: StartupReport | None = None) -> FastAPI:
    metrics = Metrics()  # one registry per app: apps (and tests) never share series

    def observe(orchestrator: Orchestrator) -> None:
        orchestrator.retention.observers.append(metrics.observe_retention)
        orchestrator.reconciler.observers.append(metrics.observe_pass)
        orchestrator.loop_lag.observers.append(metrics.observe_loop_lag)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.build(settings, startup)
        app.state.runtime = runtime
        try:
            await runtime.start(observe)
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Stream Orchestrator",
        version=__version__,
        summary="Keeps every enabled stream running on exactly one healthy worker.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
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
