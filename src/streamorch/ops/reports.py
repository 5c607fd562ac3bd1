"""The bodies of `/health`, `/ready` and `/health/detailed`, built from the runtime.

The rules for each part are in ops/health.py; this module puts the parts together (every
part bounded in time, run concurrently) and words the advice of `/health/detailed`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streamorch.config import check_consistency
from streamorch.domain.probes import Probe
from streamorch.ops import health
from streamorch.ops.runtime import Runtime
from streamorch.store import diagnostics, migrations

LISTED = 100  # workers, moves and failovers listed in /health/detailed


async def _nothing() -> dict[str, Any]:
    return {}


async def _bounded(coro: Any, what: str) -> Any:
    """The result, or {"error": ...} when it failed or took longer than a check may."""
    try:
        async with asyncio.timeout(health.CHECK_TIMEOUT_S):
            return await coro
    except Exception as exc:
        return {"error": f"{what} unavailable: {exc or type(exc).__name__}"}


async def _counts(rt: Runtime) -> dict[str, Any]:
    if rt.orchestrator is None:
        return {}
    status = await rt.orchestrator.status()
    return {k: status[k] for k in ("streams", "workers", "capacity", "load", "load_percent")}


def _known_down(rt: Runtime, name: str) -> health.Check | None:
    """The monitor's last failed probe when it says the service is down (it re-probes twice
    a second): /health then answers at once instead of waiting out a dead server."""
    monitor = rt.monitors.get(name)
    if monitor is None or monitor.available is not False or monitor.last is None:
        return None
    last = monitor.last.as_check()
    return {**last, "details": {**last["details"], "from": "monitor"}}


def _noted(rt: Runtime, name: str, check: Probe) -> health.Check:
    monitor = rt.monitors.get(name)
    if monitor is not None:
        monitor.note(check, source="health")
    return check.as_check()


async def _postgres(rt: Runtime) -> health.Check:
    down = _known_down(rt, "postgresql")
    return down or _noted(rt, "postgresql", await health.check_postgres(rt.db))


async def _redis(rt: Runtime) -> health.Check:
    required = rt.settings.redis_required
    down = _known_down(rt, "redis")
    if down is not None:
        return {**down, "details": {**down["details"], "required": required}}
    return _noted(rt, "redis", await health.check_redis(rt.redis, rt.redis_target, required))


async def _report(rt: Runtime) -> dict[str, Any]:
    pg_down = _known_down(rt, "postgresql") is not None
    postgres, redis, counts = await asyncio.gather(
        _postgres(rt),
        _redis(rt),
        _bounded(_counts(rt), "counts") if not pg_down else _nothing(),
    )
    uptime = time.monotonic() - rt.started_at
    reconciler: health.Check = (
        health.reconciler(
            rt.orchestrator.reconciler.stats,
            rt.settings.reconcile_interval,
            postgres["details"] if postgres["status"] == "ready" else {},
            uptime,
        )
        if rt.orchestrator is not None
        else {"status": "starting", "error": None, "suggestion": None}
    )
    load = _server_load(rt)
    level = health.overall(
        postgres, redis, reconciler["status"], rt.settings.redis_required, load["status"]
    )
    # Top-level "healthy" whenever this server can serve, degraded or not: the original
    # instances' clients treat anything else as "orchestrator down" and stop heartbeating
    # (docs/decisions/0011-health-keeps-original-clients-connected.md). What is impaired
    # is listed in `degraded`.
    status = "unhealthy" if level == "unhealthy" else "healthy"
    degraded = [] if level == "healthy" else _impaired(postgres, redis, reconciler, load)
    errors = [
        {
            "service": name,
            "code": check.get("code") or check.get("details", {}).get("code"),
            "error": check["error"],
            "suggestion": check["suggestion"],
        }
        for name, check in (
            ("postgresql", postgres),
            ("redis", redis),
            ("reconciler", reconciler),
            ("server_load", load),
        )
        if check.get("error")
    ]
    for name, module in rt.module_status.items():
        if module.status != "available":
            problem = health.module_problem(name, module)
            errors.append(
                {
                    "service": name,
                    "code": problem.code,
                    "error": problem.message,
                    "suggestion": problem.fix,
                }
            )
    details = {**health.base_details(rt.started_at), "startup_complete": rt.ready, **counts}
    if rt.orchestrator is not None:
        notifier = rt.orchestrator.notifier
        details["notifications"] = {
            "listening": dict(notifier.listening),
            "received": dict(notifier.received),
        }
    return {
        "status": status,
        "degraded": degraded,
        "timestamp": health.now_iso(),
        "services": {"postgresql": postgres, "redis": redis},
        "reconciler": reconciler,
        "server_load": load,
        "application_components": health.components(rt.module_status),
        "system_metrics": health.system_metrics(
            rt.modules.get("psutil"), str(rt.settings.data_dir)
        ),
        "details": details,
        "errors": errors,
    }


def _server_load(rt: Runtime) -> dict[str, Any]:
    orch = rt.orchestrator
    if orch is None:
        return {"status": "ready", "error": None, "suggestion": None}
    last_ms = orch.reconciler.stats.last_duration_ms
    return health.server_load(
        orch.loop_lag.last_s,
        orch.loop_lag.recent_max_s(),
        None if last_ms is None else last_ms / 1000,
        rt.settings.lease_ttl,
        rt.settings.heartbeat_interval,
    )


def _impaired(
    postgres: health.Check, redis: health.Check, reconciler: health.Check, load: health.Check
) -> list[str]:
    checks = (("postgresql", postgres), ("redis", redis))
    names = [name for name, check in checks if check["status"] != "ready"]
    names += ["reconciler"] if reconciler["status"] in ("stale", "failed") else []
    return names + (["server_load"] if load["status"] != "ready" else [])


def _redis_state(rt: Runtime) -> health.Check:
    if rt.redis is None:
        return health.redis_not_configured(rt.settings.redis_required).as_check()
    monitor = rt.monitors.get("redis")
    if monitor is None or monitor.last is None:
        return {
            "status": "unknown",
            "latency_ms": None,
            "details": {"required": rt.settings.redis_required},
            "error": None,
            "suggestion": None,
        }
    age = round(time.monotonic() - (monitor.checked_at or 0), 3)
    last = monitor.last.as_check()
    return {**last, "details": {**last["details"], "checked_s_ago": age}}


async def _internals(rt: Runtime) -> dict[str, Any]:
    if rt.orchestrator is None:
        return {}
    orch = rt.orchestrator
    status = await orch.status()
    rows = await diagnostics.internals(rt.db, LISTED)
    workers, moves, failovers = rows.workers, rows.moves, rows.failovers
    stats = orch.reconciler.stats
    return {
        "status": status,
        "workers": [
            {
                **w,
                "last_heartbeat": health.iso(w["last_heartbeat"]),
                "lease_expires_at": health.iso(w["lease_expires_at"]),
            }
            for w in workers
        ],
        "moves_in_flight": {
            "count": status["streams"].get("moving", 0),
            "oldest": [{**m, "revoked_at": health.iso(m["revoked_at"])} for m in moves],
        },
        "last_failovers": [{**f, "at": health.iso(f["at"])} for f in failovers],
        "reconciler": {
            "passes_here": stats.passes,
            "planned_passes_here": stats.planned_passes,
            "grants_here": stats.grants,
            "revokes_here": stats.revokes,
            "expired_here": stats.expired,
            "unplaced": dict(list(stats.unplaced.items())[:20]),
        },
        "db_pool": rt.db.pool_stats(),
    }


def _advice(rt: Runtime, body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Warnings (what is wrong now) and recommendations (what to change), in words."""
    warnings = [f"{e['service']}: {e['error']}" for e in body["errors"]]
    advice = [e["suggestion"] for e in body["errors"] if e.get("suggestion")]
    settings = rt.settings
    internals = body.get("orchestrator") or {}
    status = internals.get("status") or {}
    if "error" in internals:
        warnings.append(internals["error"])
    unassigned = (status.get("streams") or {}).get("unassigned", 0)
    if unassigned:
        reasons = list((internals.get("reconciler") or {}).get("unplaced", {}).values())[:3]
        warnings.append(f"{unassigned} enabled stream(s) are unassigned: " + "; ".join(reasons))
        advice.append(
            "add workers (or capacity) whose labels match the streams' `requires`; "
            "`GET /v1/streams/{key}/explain` says why a stream is unplaced"
        )
    balance = status.get("balance") or {}
    if balance.get("max_utilisation", 0) >= 0.9:
        advice.append(
            f"the busiest worker is at {balance['max_utilisation']:.0%} of its capacity: "
            "add workers before a failover has nowhere to go"
        )
    pool = rt.db.pool_stats()
    if pool.get("requests_waiting"):
        advice.append(
            f"{pool['requests_waiting']} request(s) wait for a database connection: raise "
            f"DB_POOL_MAX_SIZE (now {settings.db_pool_max_size}) if PostgreSQL has room"
        )
    last_ms = rt.orchestrator.reconciler.stats.last_duration_ms if rt.orchestrator else None
    if last_ms is not None and last_ms > settings.reconcile_interval * 1000:
        advice.append(
            f"the last reconcile pass took {last_ms:.0f} ms, longer than RECONCILE_INTERVAL "
            f"({settings.reconcile_interval:g} s): raise the interval or split the fleet into pools"
        )
    if settings.lease_ttl < 3 * settings.heartbeat_interval:
        advice.append(
            f"LEASE_TTL={settings.lease_ttl:g} allows fewer than 3 heartbeats "
            f"(HEARTBEAT_INTERVAL={settings.heartbeat_interval:g}): one slow heartbeat "
            "expires a healthy worker; use about 5 ×"
        )
    if settings.admin_token is None and settings.orchestrator_host not in (
        "127.0.0.1",
        "::1",
        "localhost",
    ):
        warnings.append(f"the API listens on {settings.orchestrator_host} without tokens")
        advice.append("set STREAMORCH_ADMIN_TOKEN and STREAMORCH_WORKER_TOKEN")
    listening = (body["details"].get("notifications") or {}).get("listening", {})
    if listening and not listening.get("postgresql"):
        warnings.append(
            "the PostgreSQL notification listener is down: long-polls wake only via Redis "
            "or at their timeout"
        )
    return warnings, list(dict.fromkeys(advice))


async def health_body(rt: Runtime) -> dict[str, Any]:
    """The body of `/health`."""
    return await _report(rt)


async def ready_body(rt: Runtime) -> tuple[dict[str, Any], bool]:
    """The body of `/ready`, and whether this server is ready."""
    pg_monitor = rt.monitors.get("postgresql")
    # The monitor runs this same check twice a second: a success from the last second, or
    # a failure it still stands by, answers now. A live query only fills the gaps (start,
    # a slow probe), so a load balancer's probes never pile up on a dead server.
    fresh = pg_monitor.fresh() if pg_monitor else None
    postgres = _known_down(rt, "postgresql") or (fresh.as_check() if fresh else None)
    if postgres is None:
        probe = await health.ready_postgres(rt.db)
        if pg_monitor is not None:
            pg_monitor.record(probe, source="ready")
        postgres = probe.as_check()
    redis = _redis_state(rt)
    orchestrator = {
        "status": "ready" if rt.ready else "starting",
        "startup_complete": rt.ready,
        "schema_version": postgres["details"].get("schema_version"),
        "schema_expected": migrations.expected_version(),
    }
    if not rt.ready:
        problem = health.not_started("the application is starting or stopping")
        orchestrator.update(error=problem.message, suggestion=problem.fix, code=problem.code)
    # A failed reconciler does not make this server unready: it still serves heartbeats,
    # and taking every replica out of rotation for a bug would fence every worker
    # (docs/decisions/0020). /health reports it.
    ready = (
        rt.ready
        and postgres["status"] == "ready"
        and (redis["status"] == "ready" or not rt.settings.redis_required)
    )
    body = {
        "status": "ready" if ready else "not_ready",
        "services": {"postgresql": postgres, "redis": redis, "orchestrator": orchestrator},
    }
    return body, ready


async def detailed_body(rt: Runtime) -> dict[str, Any]:
    """The body of `/health/detailed`: `/health`, the configuration, history and advice."""
    internals: Any = {"error": "orchestrator internals unavailable: PostgreSQL is down"}
    body: dict[str, Any]
    if _known_down(rt, "postgresql") is None:
        body, internals = await asyncio.gather(
            _report(rt), _bounded(_internals(rt), "orchestrator internals")
        )
    else:
        body = await _report(rt)
    settings = rt.settings
    body["configuration"] = {
        "values": settings.describe(),
        "problems": [p.as_dict() for p in check_consistency(settings)],
        "postgres": "external" if settings.postgres_is_external else "embedded",
        "redis": "external" if settings.redis_is_external else "embedded",
        "auth": "on" if settings.admin_token or settings.worker_token else "off",
    }
    body["timeouts_s"] = {
        "health_check": health.CHECK_TIMEOUT_S,
        "ready_check": health.READY_TIMEOUT_S,
        "monitor_probe": health.MONITOR_TIMEOUT_S,
        "monitor_interval": health.MONITOR_INTERVAL_S,
        "db_timeout": settings.db_timeout,
        "redis_socket": 2.0,
        "postgres_startup": settings.postgres_startup_timeout,
        "redis_startup": settings.redis_startup_timeout,
        "app_startup": settings.app_startup_timeout,
        "heartbeat_interval": settings.heartbeat_interval,
        "lease_ttl": settings.lease_ttl,
        "reconcile_interval": settings.reconcile_interval,
    }
    body["history"] = {name: m.summary() for name, m in rt.monitors.items()}
    body["orchestrator"] = internals
    body["warnings"], body["recommendations"] = _advice(rt, body)
    return body
