"""The pure rules of health: staleness of the reconciler and the overall status."""

from __future__ import annotations

import time

from streamorch.core.reconciler import ReconcilerStats
from streamorch.ops import health
from streamorch.ops.modules import ModuleStatus

READY = health.ok("postgresql", 1.0, {}).as_check()
DOWN = health.failed("postgresql", health.not_started("x")).as_check()


def test_reconciler_is_ready_then_stale_after_five_intervals():
    stats = ReconcilerStats(last_pass_at=time.time() - 1, last_duration_ms=10.0)
    assert health.reconciler(stats, 1.0, {}, uptime_s=60)["status"] == "ready"
    stats.last_pass_at = time.time() - 6
    stale = health.reconciler(stats, 1.0, {}, uptime_s=60)
    assert stale["status"] == "stale"
    assert stale["code"] == "reconciler.stale"
    assert "no reconcile pass has run for" in stale["error"]
    assert "PostgreSQL" in stale["suggestion"]


def test_the_cluster_pass_counts_when_another_replica_runs_them():
    stats = ReconcilerStats()  # this replica never held the lock
    cluster = {"last_pass_age_s": 0.4, "last_pass_at": "2026-01-01T00:00:00Z"}
    assert health.reconciler(stats, 1.0, cluster, uptime_s=60)["status"] == "ready"


def test_reconciler_starting_then_stale_without_any_pass():
    stats = ReconcilerStats(last_error="connection refused")
    assert health.reconciler(stats, 1.0, {}, uptime_s=1)["status"] == "starting"
    stale = health.reconciler(stats, 1.0, {}, uptime_s=30)
    assert stale["status"] == "stale"
    assert "since start-up" in stale["error"]
    assert "connection refused" in stale["error"]


def test_overall_status():
    assert health.overall(READY, READY, "ready", required_redis=False) == "healthy"
    assert health.overall(READY, DOWN, "ready", required_redis=False) == "degraded"
    assert health.overall(READY, READY, "stale", required_redis=False) == "degraded"
    assert health.overall(READY, DOWN, "ready", required_redis=True) == "unhealthy"
    assert health.overall(DOWN, READY, "ready", required_redis=False) == "unhealthy"


def test_missing_module_problem_says_what_is_lost_and_how_to_get_it():
    status = ModuleStatus("unavailable", "system metrics", "no module", "pip install x[y]")
    problem = health.module_problem("psutil", status)
    assert problem.code == "module.unavailable"
    assert (
        problem.message == "optional module psutil is not installed: system metrics is unavailable"
    )
    assert problem.fix == "pip install x[y]"


def test_redis_not_configured():
    check = health.redis_not_configured(required=False).as_check()
    assert check["details"]["code"] == "redis.not_configured"
    assert check["error"] == "Redis is not configured"


def test_server_load_warns_at_half_the_lease_margin():
    calm = health.server_load(0.002, 0.01, 0.2, lease_ttl=10.0, heartbeat_interval=2.0)
    assert calm["status"] == "ready"
    assert calm["lease_margin_s"] == 8.0
    lagging = health.server_load(0.002, 4.5, 0.2, lease_ttl=10.0, heartbeat_interval=2.0)
    assert lagging["status"] == "overloaded"
    assert lagging["code"] == "server.overloaded"
    assert "event loop lagged 4.50 s" in lagging["error"]
    slow_pass = health.server_load(0.0, 0.0, 4.0, lease_ttl=10.0, heartbeat_interval=2.0)
    assert slow_pass["status"] == "overloaded"
    assert "a pass took 4.00 s" in slow_pass["error"]
    assert health.overall(READY, READY, "ready", False, slow_pass["status"]) == "degraded"
