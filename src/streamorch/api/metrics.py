"""Prometheus metrics, one registry per application (so apps and tests never collide).

Three sources, each as cheap as it can be:

* requests — counted by the middleware as they finish (`observe_request`);
* reconcile passes — observed by the reconciler after each pass it ran
  (`observe_pass`): duration, grants, revokes and moves by reason, lease expirations.
  Only the replica holding the lock runs a pass, so summing replicas gives the cluster;
* state — read at scrape time (`refresh`): stream and worker counts, fleet utilisation
  and balance from one status read, pool figures from psycopg_pool, Redis and
  PostgreSQL availability from the health monitors. A scrape never fails because a
  service is down: the figures it could not read keep their last value and
  `streamorch_postgres_up` says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from streamorch.core.retention import RetentionReport
    from streamorch.domain.records import PassResult
    from streamorch.ops.runtime import Runtime

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
REFRESH_TIMEOUT_S = 2.0
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "streamorch_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "streamorch_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template (long-polls included)",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.heartbeats = Counter(
            "streamorch_heartbeats",
            "Worker heartbeats received, by outcome",
            ["result"],
            registry=r,
        )
        self.pass_seconds = Histogram(
            "streamorch_reconcile_pass_duration_seconds",
            "Duration of reconcile passes run by this process",
            buckets=_PASS_BUCKETS,
            registry=r,
        )
        self.grants = Counter(
            "streamorch_grants", "Streams granted to a worker, by reason", ["reason"], registry=r
        )
        self.revokes = Counter(
            "streamorch_revokes", "Streams revoked from a worker, by reason", ["reason"], registry=r
        )
        self.moves = Counter(
            "streamorch_moves",
            "Moves begun (revokes with a target worker), by reason",
            ["reason"],
            registry=r,
        )
        self.lease_expirations = Counter(
            "streamorch_lease_expirations", "Workers whose lease expired", registry=r
        )
        self.leases_extended = Counter(
            "streamorch_leases_extended",
            "Leases extended after a control-plane outage (no pass for half a lease)",
            registry=r,
        )
        self.retention_deleted = Counter(
            "streamorch_retention_deleted",
            "Rows deleted by retention in this process: departed workers, old events",
            ["kind"],
            registry=r,
        )
        self.history_bytes = Gauge(
            "streamorch_history_table_bytes",
            "Size on disk of the tables that keep history (cluster-wide), with indexes",
            ["table"],
            registry=r,
        )
        self.streams = Gauge(
            "streamorch_streams", "Streams by state (cluster-wide)", ["state"], registry=r
        )
        self.unassigned = Gauge(
            "streamorch_unassigned_streams",
            "Enabled streams not assigned to any worker",
            registry=r,
        )
        self.workers = Gauge(
            "streamorch_workers", "Workers by status (cluster-wide)", ["status"], registry=r
        )
        self.capacity = Gauge("streamorch_fleet_capacity", "Sum of worker capacities", registry=r)
        self.load = Gauge("streamorch_fleet_load", "Sum of assigned stream weights", registry=r)
        self.utilisation = Gauge(
            "streamorch_fleet_utilisation",
            "Utilisation of active workers: max and mean of load/capacity",
            ["stat"],
            registry=r,
        )
        self.balance = Gauge(
            "streamorch_fleet_balance",
            "Max over mean utilisation of active workers (1 is perfectly balanced)",
            registry=r,
        )
        self.pool = Gauge(
            "streamorch_db_pool_connections",
            "PostgreSQL pool: connections in use, idle, and requests waiting for one",
            ["state"],
            registry=r,
        )
        self.up = Gauge(
            "streamorch_service_up",
            "1 when the service answered its last health probe",
            ["service"],
            registry=r,
        )
        self.reconcile_age = Gauge(
            "streamorch_reconcile_last_pass_age_seconds",
            "Seconds since this process last ran a reconcile pass",
            registry=r,
        )
        self.reconciler_failed = Gauge(
            "streamorch_reconciler_failed",
            "1 while this process's reconciler is failed on an unexpected error (ADR 0020)",
            registry=r,
        )
        self.reconciler_restarts = Gauge(
            "streamorch_reconciler_restarts",
            "Times this process's reconciler was started again after an unexpected error",
            registry=r,
        )
        self.loop_lag = Histogram(
            "streamorch_event_loop_lag_seconds",
            "How late this process's event loop ran a timer due every 50 ms",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "streamorch_event_loop_lag_max_seconds",
            "Largest event-loop lag over the last lease TTL (how late a lease may be expired)",
            registry=r,
        )
        self.settling = Gauge(
            "streamorch_placement_settling",
            "1 while placement waits for workers that keep registering to settle",
            registry=r,
        )
        self.modules = Gauge(
            "streamorch_optional_module_available",
            "1 when the optional module loaded",
            ["module"],
            registry=r,
        )

    # -- observed as things happen ---------------------------------------------
    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)
        if route.endswith("/heartbeat") and method == "POST":
            self.heartbeats.labels(_heartbeat_result(status)).inc()

    def observe_retention(self, report: RetentionReport) -> None:
        """Called by the retention loop after each round."""
        self.retention_deleted.labels("workers").inc(report.workers)
        self.retention_deleted.labels("events").inc(report.events)

    def observe_pass(self, result: PassResult, duration_ms: float) -> None:
        """Called by the reconciler after each pass: a failure here must never stop passes."""
        try:
            self._observe_pass(result, duration_ms)
        except Exception:
            log.exception("recording reconcile metrics failed", extra={"action": "metrics_failed"})

    def _observe_pass(self, result: PassResult, duration_ms: float) -> None:
        self.pass_seconds.observe(duration_ms / 1000)
        for grant in result.plan.grants:
            self.grants.labels(grant.reason).inc()
        for revoke in result.plan.revokes:
            self.revokes.labels(revoke.reason).inc()
            if revoke.target is not None:
                self.moves.labels(revoke.reason).inc()
        if result.expired:
            self.lease_expirations.inc(len(result.expired))
        if result.graced:
            self.leases_extended.inc(result.graced)
        if result.planned:
            self.settling.set(1 if result.settle_s > 0 else 0)

    def observe_loop_lag(self, lag_s: float) -> None:
        self.loop_lag.observe(lag_s)

    # -- read at scrape time ---------------------------------------------------
    async def refresh(self, rt: Runtime) -> None:
        for name, module in rt.module_status.items():
            self.modules.labels(name).set(1 if module.status == "available" else 0)
        for name, monitor in rt.monitors.items():
            self.up.labels(name).set(1 if monitor.available else 0)
        stats = rt.db.pool_stats()
        if stats:
            self.pool.labels("in_use").set(stats["pool_size"] - stats["pool_available"])
            self.pool.labels("idle").set(stats["pool_available"])
            self.pool.labels("waiting").set(stats["requests_waiting"])
        orch = rt.orchestrator
        if orch is None:
            return
        pg = rt.monitors.get("postgresql")
        if pg is not None and pg.available is False:
            return  # known down: keep the last figures rather than wait on a dead server
        self.loop_lag_max.set(round(orch.loop_lag.recent_max_s(), 4))
        reconciler = orch.reconciler.stats
        self.reconciler_failed.set(1 if reconciler.state == "failed" else 0)
        self.reconciler_restarts.set(reconciler.restarts)
        last = reconciler.last_pass_at
        if last is not None:
            self.reconcile_age.set(round(time.time() - last, 3))
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                status = await orch.status()
                sizes = await orch.retention.store.table_sizes()
        except Exception as exc:  # a scrape reports what it can; health says why
            log.debug("metrics: cluster status unavailable: %s", exc)
            return
        for state, n in status["streams"].items():
            self.streams.labels(state).set(n)
        self.unassigned.set(status["streams"].get("unassigned", 0))
        for state, n in status["workers"].items():
            self.workers.labels(state).set(n)
        for table, size in sizes.items():
            self.history_bytes.labels(table).set(size["bytes"])
        self.capacity.set(status["capacity"])
        self.load.set(status["load"])
        balance = status["balance"]
        self.utilisation.labels("max").set(balance["max_utilisation"])
        self.utilisation.labels("mean").set(balance["mean_utilisation"])
        self.balance.set(balance["max_over_mean"] or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _heartbeat_result(status: int) -> str:
    if status < 300:
        return "ok"
    return {404: "unknown_worker", 409: "rejected", 503: "unavailable"}.get(status, "error")
