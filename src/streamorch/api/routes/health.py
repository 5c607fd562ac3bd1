"""Liveness, readiness and component health (shapes in API.md)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from streamorch.api.app import Runtime
from streamorch.core import health
from streamorch.store import migrations

router = APIRouter(tags=["health"])


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


@router.get("/health")
async def get_health(request: Request) -> JSONResponse:
    rt = _runtime(request)
    postgres, redis = await asyncio.gather(
        health.check_postgres(rt.db),
        health.check_redis(rt.redis, rt.redis_target, rt.settings.redis_required),
    )
    status = health.overall(postgres, redis, rt.settings.redis_required)
    errors = [
        {"service": name, "error": check["error"], "suggestion": check["suggestion"]}
        for name, check in (("postgresql", postgres), ("redis", redis))
        if check["status"] != "ready"
    ]
    body = {
        "status": status,
        "timestamp": health.now_iso(),
        "services": {"postgresql": postgres, "redis": redis},
        "application_components": health.components(rt.module_status),
        "system_metrics": health.system_metrics(rt.modules.get("psutil")),
        "details": health.base_details(rt.started_at),
        "errors": errors,
    }
    return JSONResponse(body, status_code=503 if status == "unhealthy" else 200)


@router.get("/ready")
async def get_ready(request: Request) -> JSONResponse:
    rt = _runtime(request)
    postgres, redis = await asyncio.gather(
        health.check_postgres(rt.db),
        health.check_redis(rt.redis, rt.redis_target, rt.settings.redis_required),
    )
    expected = migrations.expected_version()
    schema_ok = postgres["details"].get("schema_version") == expected
    orchestrator = {
        "status": "ready" if rt.ready else "starting",
        "startup_complete": rt.ready,
        "schema_version": postgres["details"].get("schema_version"),
        "schema_expected": expected,
    }
    ready = (
        rt.ready
        and postgres["status"] == "ready"
        and schema_ok
        and (redis["status"] == "ready" or not rt.settings.redis_required)
    )
    body = {
        "status": "ready" if ready else "not_ready",
        "services": {"postgresql": postgres, "redis": redis, "orchestrator": orchestrator},
    }
    return JSONResponse(body, status_code=200 if ready else 503)
