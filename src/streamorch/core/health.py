"""Health and readiness: what each component is doing, measured now.

Every check is bounded in time, so the probes themselves never hang.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from streamorch import __version__
from streamorch.core.modules import ModuleStatus
from streamorch.services import diagnose
from streamorch.services.endpoints import RedisTarget
from streamorch.store import migrations
from streamorch.store.database import DatabaseManager

CHECK_TIMEOUT_S = 2.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def check_postgres(db: DatabaseManager) -> dict[str, Any]:
    if not db.is_open:
        return {
            "status": "error",
            "latency_ms": None,
            "details": {},
            "error": "database pool not open",
            "suggestion": "wait for start-up to finish",
        }
    probe = await db.verify_connection(timeout=CHECK_TIMEOUT_S)
    if not probe.ok:
        assert probe.problem is not None
        return {
            "status": "error",
            "latency_ms": None,
            "details": {"code": probe.problem.code},
            "error": probe.problem.message,
            "suggestion": probe.problem.fix,
        }
    details: dict[str, Any] = {"server_version": probe.version}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            version = await db.schema_version()
        details.update(schema_version=version, schema_expected=migrations.expected_version())
    except Exception as exc:  # a failing detail must not fail the whole check
        details["schema_error"] = str(exc)
    return {
        "status": "ready",
        "latency_ms": probe.latency_ms,
        "details": details,
        "error": None,
        "suggestion": None,
    }


async def check_redis(
    client: aioredis.Redis | None, target: RedisTarget | None, required: bool
) -> dict[str, Any]:
    if client is None or target is None:
        return {
            "status": "error",
            "latency_ms": None,
            "details": {"required": required},
            "error": "Redis is not configured",
            "suggestion": "set REDIS_URL",
        }
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await client.ping()
            info = await client.info("server")
    except (aioredis.RedisError, OSError, TimeoutError) as exc:
        problem = diagnose.redis_problem(exc, target)
        return {
            "status": "error",
            "latency_ms": None,
            "details": {"required": required, "code": problem.code},
            "error": problem.message,
            "suggestion": problem.fix,
        }
    latency = round((time.perf_counter() - started) * 1000, 2)
    return {
        "status": "ready",
        "latency_ms": latency,
        "details": {
            "required": required,
            "server_version": info.get("valkey_version") or info.get("redis_version"),
            "uptime_s": info.get("uptime_in_seconds"),
        },
        "error": None,
        "suggestion": None,
    }


def components(registry: dict[str, ModuleStatus]) -> dict[str, dict[str, Any]]:
    return {
        name: {k: v for k, v in asdict(s).items() if v is not None} for name, s in registry.items()
    }


def system_metrics(psutil: Any) -> dict[str, Any] | None:
    if psutil is None:
        return None
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": psutil.virtual_memory().percent,
        "process_rss_mb": round(psutil.Process(os.getpid()).memory_info().rss / 2**20, 1),
        "load_average": list(os.getloadavg()),
    }


def overall(postgres: dict[str, Any], redis: dict[str, Any], required_redis: bool) -> str:
    if postgres["status"] != "ready" or (required_redis and redis["status"] != "ready"):
        return "unhealthy"
    if redis["status"] != "ready":
        return "degraded"
    return "healthy"


def base_details(started_at: float) -> dict[str, Any]:
    return {
        "version": __version__,
        "uptime_s": round(time.monotonic() - started_at, 1),
        "pid": os.getpid(),
    }
