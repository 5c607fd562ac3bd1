"""Liveness, readiness, diagnostics and metrics (shapes in API.md).

`/health` and `/ready` need no token; `/health/detailed` and `/metrics` follow the
admin rule. Each answer is bounded in time: the checks run concurrently, each
under its own timeout.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from streamorch.api import deps, metrics
from streamorch.ops import reports

router = APIRouter(tags=["health"])


@router.get("/health")
async def get_health(rt: deps.RuntimeDep) -> JSONResponse:
    body = await reports.health_body(rt)
    return JSONResponse(body, status_code=503 if body["status"] == "unhealthy" else 200)


@router.get("/ready")
async def get_ready(rt: deps.RuntimeDep) -> JSONResponse:
    body, ready = await reports.ready_body(rt)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/health/detailed", dependencies=[Depends(deps.require_diagnostics)])
async def get_health_detailed(rt: deps.RuntimeDep) -> JSONResponse:
    body = await reports.detailed_body(rt)
    return JSONResponse(body, status_code=503 if body["status"] == "unhealthy" else 200)


@router.get("/metrics", dependencies=[Depends(deps.require_diagnostics)])
async def get_metrics(request: Request, rt: deps.RuntimeDep) -> Response:
    registry: metrics.Metrics = request.app.state.metrics
    await registry.refresh(rt)
    return Response(registry.render(), media_type=metrics.CONTENT_TYPE)
