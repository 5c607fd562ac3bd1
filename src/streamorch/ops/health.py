"""Health and readiness: what each component is doing, measured now.

Every check is bounded in time, so the probes themselves never hang. Two kinds:

* deep checks for `/health` — PostgreSQL answers, a write and its read in a
  rolled-back transaction, the schema version, the last reconcile pass anywhere in
  the cluster; Redis PING, INFO and a SET/GET with a TTL. They run concurrently.
* monitors — one background loop per service probing it every
  `MONITOR_INTERVAL_S`. `/ready` reads their state instead of reconnecting to a
  dead server on every probe, they log each loss and recovery once, and keep the
  response-time history shown by `/health/detailed`.

Each failure is a `Problem` (code, message, fix) listed in docs/troubleshooting.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from streamorch import __version__
from streamorch.backing import diagnose
from streamorch.backing.endpoints import RedisTarget
from streamorch.domain.errors import StoreError
from streamorch.domain.probes import Probe, schema_problem
from streamorch.domain.problems import Problem
from streamorch.ops.modules import ModuleStatus
from streamorch.store import clients, diagnostics, migrations
from streamorch.store.clients import RedisClient
from streamorch.store.database import DatabaseManager

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0  # each deep check of /health
READY_TIMEOUT_S = 1.0  # the live PostgreSQL query of /ready
READY_FRESH_S = 0.75  # /ready trusts a successful monitor probe this recent (1.5 probes)
MONITOR_INTERVAL_S = 0.5
MONITOR_TIMEOUT_S = 1.0
HISTORY_SIZE = 120  # probes kept per service: one minute at the monitor's pace
STALE_PASSES = 5  # the reconciler is stale after this many intervals without a pass
OVERLOAD_FRACTION = 0.5  # of the lease margin: see server_load()

Check = dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso(value: datetime | float | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        value = datetime.fromtimestamp(value, UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ok(name: str, latency_ms: float | None, details: dict[str, Any]) -> Probe:
    return Probe.passed(name, latency_ms, data=details)


def failed(name: str, problem: Problem, details: dict[str, Any] | None = None) -> Probe:
    return Probe.failed(name, problem, details)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


# -- PostgreSQL ------------------------------------------------------------------------


def read_only_problem(db: DatabaseManager) -> Problem:
    target = db.target
    return Problem(
        "postgres.read_only",
        f"PostgreSQL on {target.host}:{target.port} accepts no writes "
        "(a standby, or default_transaction_read_only is on)",
        "point DATABASE_URL/DB_HOST at the primary; after a failover, at the new primary",
    )


def _pg_problem(db: DatabaseManager, exc: BaseException) -> Problem:
    if isinstance(exc, diagnostics.ReadOnly):
        return read_only_problem(db)
    return diagnose.postgres_problem(exc, db.target)


_PG_ERRORS = (StoreError, OSError, TimeoutError)


async def check_postgres(db: DatabaseManager) -> Probe:
    """The deep check: version, schema, last cluster pass, and a rolled-back write + read."""
    if not db.is_open:
        return failed("postgresql", not_started("the PostgreSQL pool is not open yet"))
    details: dict[str, Any] = {"schema_expected": migrations.expected_version()}
    try:
        latency = await diagnostics.deep_check(db, CHECK_TIMEOUT_S, details)
    except _PG_ERRORS as exc:
        return failed("postgresql", _pg_problem(db, exc), _iso_pass(details))
    problem = schema_problem(details["schema_version"], details["schema_expected"])
    if problem is not None:
        return failed("postgresql", problem, _iso_pass(details))
    return ok("postgresql", latency, _iso_pass(details))


def _iso_pass(details: dict[str, Any]) -> dict[str, Any]:
    if "last_pass_at" in details:
        details["last_pass_at"] = iso(details["last_pass_at"])
    return details


async def ready_postgres(db: DatabaseManager) -> Probe:
    """Readiness: PostgreSQL answers now and the schema is at the expected version."""
    if not db.is_open:
        return failed("postgresql", not_started("the PostgreSQL pool is not open yet"))
    expected = migrations.expected_version()
    started = time.perf_counter()
    try:
        version = await diagnostics.schema_version(db, READY_TIMEOUT_S)
    except _PG_ERRORS as exc:
        return failed("postgresql", _pg_problem(db, exc))
    details = {"schema_version": version, "schema_expected": expected}
    problem = schema_problem(version, expected)
    return (
        failed("postgresql", problem, details)
        if problem
        else ok("postgresql", _ms(started), details)
    )


# -- Redis -----------------------------------------------------------------------------


def redis_not_configured(required: bool) -> Probe:
    return failed(
        "redis",
        Problem(
            "redis.not_configured",
            "Redis is not configured",
            "set REDIS_URL (or REDIS_HOST), or unset every Redis setting to use the embedded one",
        ),
        {"required": required},
    )


_REDIS_ERRORS = (StoreError, OSError, TimeoutError)


async def check_redis(
    client: RedisClient | None, target: RedisTarget | None, required: bool
) -> Probe:
    """The deep check: PING, server INFO, and a SET with a TTL read back."""
    if client is None or target is None:
        return redis_not_configured(required)
    details: dict[str, Any] = {"required": required}
    try:
        seen = await clients.check_redis(client, CHECK_TIMEOUT_S)
    except _REDIS_ERRORS as exc:
        return failed("redis", diagnose.redis_problem(exc, target), details)
    if not seen.read_back:
        return failed(
            "redis",
            Problem(
                "redis.error",
                "Redis did not return the value just written",
                "check for a proxy or eviction policy that drops keys; read the Redis log",
            ),
            details,
        )
    info = seen.info
    details.update(
        server_version=info.get("valkey_version") or info.get("redis_version"),
        uptime_s=info.get("uptime_in_seconds"),
        connected_clients=info.get("connected_clients"),
        used_memory_mb=round(info.get("used_memory", 0) / 2**20, 1),
        operations={"set_get_ttl": "ok", "latency_ms": seen.operations_ms},
    )
    return ok("redis", seen.latency_ms, details)


async def ping_redis(client: RedisClient, target: RedisTarget) -> Probe:
    try:
        latency = await clients.ping_redis(client, MONITOR_TIMEOUT_S)
    except _REDIS_ERRORS as exc:
        return failed("redis", diagnose.redis_problem(exc, target))
    return ok("redis", latency, {})


# -- monitors --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # time.time()
    ok: bool
    latency_ms: float | None
    source: str  # monitor | health | ready


class ServiceMonitor:
    """Probes one service in the background and remembers what it saw.

    A loss and a recovery are each logged once (not once per probe); the last
    `HISTORY_SIZE` response times are kept for `/health/detailed`.
    """

    def __init__(
        self,
        name: str,
        label: str,
        probe: Callable[[], Awaitable[Probe]],
        interval: float = MONITOR_INTERVAL_S,
    ) -> None:
        self.name = name
        self.label = label
        self.probe = probe
        self.interval = interval
        self.last: Probe | None = None
        self.checked_at: float | None = None  # time.monotonic()
        self.down_since: float | None = None  # time.time()
        self.history: deque[Sample] = deque(maxlen=HISTORY_SIZE)
        self.losses = 0
        self.on_recovery: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def available(self) -> bool | None:
        """None until the first probe."""
        return None if self.last is None else self.last.ok

    def fresh(self, max_age: float = READY_FRESH_S) -> Probe | None:
        """The last probe if it succeeded less than `max_age` seconds ago."""
        recent = self.checked_at is not None and time.monotonic() - self.checked_at <= max_age
        return self.last if self.available and recent else None

    def note(self, check: Probe, source: str) -> None:
        """Keep the response time of a check made elsewhere (it says nothing of availability:
        a deep check can fail on a server that answers)."""
        self.history.append(
            Sample(time.time(), check.ok, check.latency_ms if check.ok else None, source)
        )

    def record(self, check: Probe, source: str = "monitor") -> None:
        was = self.available
        self.last = check
        self.checked_at = time.monotonic()
        now = time.time()
        up = check.ok
        self.history.append(Sample(now, up, check.latency_ms if up else None, source))
        if not up and was is not False:
            self.down_since = now
            self.losses += 1
            log.warning(
                "%s unavailable: %s",
                self.label,
                check.problem.message if check.problem else check.detail,
                extra={
                    "action": "service_unavailable",
                    "service": self.name,
                    "code": check.problem.code if check.problem else None,
                    "fix": check.problem.fix if check.problem else None,
                },
            )
        elif up and was is False:
            downtime = round(now - (self.down_since or now), 1)
            self.down_since = None
            log.info(
                "%s available again after %.1f s",
                self.label,
                downtime,
                extra={"action": "service_recovered", "service": self.name, "downtime_s": downtime},
            )
            for callback in self.on_recovery:
                callback()

    async def check(self) -> Probe:
        try:
            async with asyncio.timeout(MONITOR_TIMEOUT_S * 2):
                result = await self.probe()
        except TimeoutError:
            result = failed(
                self.name,
                Problem(
                    f"{'postgres' if self.name == 'postgresql' else self.name}.timeout",
                    f"{self.label} did not answer within {MONITOR_TIMEOUT_S * 2:g} s",
                    "check the network path and the server's load",
                ),
            )
        self.record(result)
        return result

    async def run(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a probe must not end the monitor
                log.exception("health monitor of %s failed", self.label)
            await asyncio.sleep(max(0.05, self.interval - (time.monotonic() - started)))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"monitor-{self.name}")

    async def stop(self, timeout: float = 2.0) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # The flag as well as the cancel: a driver may swallow a cancellation that lands
        # in the middle of a probe, and the loop must end all the same.
        self._stopping = True
        task.cancel()
        await asyncio.wait({task}, timeout=timeout)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(s.latency_ms for s in self.history if s.latency_ms is not None)
        return {
            "available": self.available,
            "down_since": iso(self.down_since),
            "losses": self.losses,
            "samples": len(self.history),
            "failures": sum(1 for s in self.history if not s.ok),
            "latency_ms": {
                "p50": latencies[len(latencies) // 2] if latencies else None,
                "max": latencies[-1] if latencies else None,
            },
            "recent": [
                {"at": iso(s.at), "ok": s.ok, "latency_ms": s.latency_ms, "source": s.source}
                for s in list(self.history)[-20:]
            ],
        }


def start_monitors(
    db: DatabaseManager, client: RedisClient | None, target: RedisTarget | None
) -> dict[str, ServiceMonitor]:
    # The PostgreSQL probe is /ready's own check (answers + schema version), so /ready
    # can answer from it without a round trip of its own.
    monitors = {
        "postgresql": ServiceMonitor("postgresql", "PostgreSQL", lambda: ready_postgres(db))
    }
    if client is not None and target is not None:
        monitors["redis"] = ServiceMonitor("redis", "Redis", lambda: ping_redis(client, target))
    for monitor in monitors.values():
        monitor.start()
    return monitors


async def stop_monitors(monitors: dict[str, ServiceMonitor]) -> None:
    for monitor in monitors.values():
        await monitor.stop()


# -- the other components --------------------------------------------------------------


def not_started(message: str) -> Problem:
    return Problem(
        "startup.not_finished",
        f"start-up has not finished: {message}",
        "wait for the `ready` log line; if it never comes, the log says which phase failed",
    )


def reconciler(
    stats: Any, interval: float, cluster: dict[str, Any], uptime_s: float
) -> dict[str, Any]:
    """Last successful pass anywhere in the cluster (or here, without PostgreSQL); stale after
    STALE_PASSES intervals plus the last pass's own duration."""
    local_age = None if stats.last_pass_at is None else round(time.time() - stats.last_pass_at, 3)
    age = cluster.get("last_pass_age_s", local_age)
    last_at = cluster.get("last_pass_at") or iso(stats.last_pass_at)
    stale_after = round(STALE_PASSES * interval + (stats.last_duration_ms or 0) / 1000, 3)
    body = {
        "status": "ready",
        "last_pass_at": last_at,
        "last_pass_age_s": age,
        "stale_after_s": stale_after,
        "last_duration_ms": stats.last_duration_ms,
        "passes_here": stats.passes,
        "last_pass_here_at": iso(stats.last_pass_at),
        "last_error": stats.last_error,
        "unplaced": len(stats.unplaced),
        "error": None,
        "suggestion": None,
    }
    if getattr(stats, "state", None) == "failed":  # docs/decisions/0020
        problem = failed_problem(stats.fatal_error)
        body.update(status="failed", error=problem.message, suggestion=problem.fix)
        body["code"] = problem.code
    elif age is None and uptime_s < stale_after:
        body["status"] = "starting"
    elif age is None or age > stale_after:
        problem = stale_problem(age, interval, stats.last_error)
        body.update(status="stale", error=problem.message, suggestion=problem.fix)
        body["code"] = problem.code
    return body


def server_load(
    lag_s: float,
    lag_max_s: float,
    last_pass_s: float | None,
    lease_ttl: float,
    heartbeat_interval: float,
) -> dict[str, Any]:
    """How close this server's own slowness comes to costing a live worker its lease (I9).

    The margin is how late a heartbeat may be answered before the lease it renews would
    have run out (LEASE_TTL − HEARTBEAT_INTERVAL). Event-loop lag delays every request;
    a long pass holds the rows of the workers it changes. Either reaching half of the
    margin is overload: leases are still safe, but not for long.
    """
    margin = max(lease_ttl - heartbeat_interval, 0.0)
    warn_at = round(margin * OVERLOAD_FRACTION, 3)
    body: dict[str, Any] = {
        "status": "ready",
        "event_loop_lag_s": round(lag_s, 4),
        "event_loop_lag_max_s": round(lag_max_s, 4),
        "last_pass_s": None if last_pass_s is None else round(last_pass_s, 3),
        "lease_margin_s": round(margin, 3),
        "warn_at_s": warn_at,
        "error": None,
        "suggestion": None,
    }
    worst, what = max((lag_max_s, "the event loop lagged"), (last_pass_s or 0.0, "a pass took"))
    if worst >= warn_at:
        problem = overload_problem(what, worst, margin)
        body.update(status="overloaded", code=problem.code, error=problem.message)
        body["suggestion"] = problem.fix
    return body


def overload_problem(what: str, seconds: float, margin: float) -> Problem:
    return Problem(
        "server.overloaded",
        f"{what} {seconds:.2f} s, over half of the {margin:g} s a heartbeat may be late "
        "before its lease runs out",
        "give the server more CPU or run another replica; fewer streams per pool, a longer "
        "LEASE_TTL or a shorter HEARTBEAT_INTERVAL widen the margin",
    )


def stale_problem(age: float | None, interval: float, last_error: str | None) -> Problem:
    since = "since start-up" if age is None else f"for {age:.1f} s"
    cause = f" (last error: {last_error})" if last_error else ""
    return Problem(
        "reconciler.stale",
        f"no reconcile pass has run {since}; expected one every {interval:g} s{cause}",
        "check that PostgreSQL is reachable and look for `reconcile_failed` in the log; "
        "a pass slower than RECONCILE_INTERVAL needs a longer interval or fewer streams per pool",
    )


def failed_problem(error: str | None) -> Problem:
    return Problem(
        "reconciler.failed",
        f"this server's reconciler stopped on an unexpected error: {error}; it starts "
        "again after a back-off (up to a minute) and reports running once a pass succeeds",
        "look for `reconciler_failed` in the log (it has the traceback); if it repeats, "
        "the pass meets a bug: report it with that traceback. Heartbeats are still served "
        "and other replicas keep running passes",
    )


def module_problem(name: str, status: ModuleStatus) -> Problem:
    return Problem(
        "module.unavailable",
        f"optional module {name} is not installed: {status.feature} is unavailable",
        status.install or f"pip install {name}",
    )


def components(registry: dict[str, ModuleStatus]) -> dict[str, dict[str, Any]]:
    return {
        name: {k: v for k, v in asdict(s).items() if v is not None} for name, s in registry.items()
    }


def system_metrics(psutil: Any, data_dir: str) -> dict[str, Any] | None:
    if psutil is None:
        return None
    process = psutil.Process(os.getpid())
    path = data_dir if os.path.isdir(data_dir) else "/"
    disk = psutil.disk_usage(path)
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "memory_percent": memory.percent,
        "memory_available_mb": round(memory.available / 2**20),
        "disk_path": path,
        "disk_percent": disk.percent,
        "disk_free_gb": round(disk.free / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "process_rss_mb": round(process.memory_info().rss / 2**20, 1),
        "process_uptime_s": round(time.time() - process.create_time(), 1),
        "system_uptime_s": round(time.time() - psutil.boot_time()),
    }


def overall(
    postgres: Check,
    redis: Check,
    reconciler_status: str,
    required_redis: bool,
    load_status: str = "ready",
) -> str:
    if postgres["status"] != "ready" or (required_redis and redis["status"] != "ready"):
        return "unhealthy"
    if (
        redis["status"] != "ready"
        or reconciler_status in ("stale", "failed")
        or load_status != "ready"
    ):
        return "degraded"
    return "healthy"


def base_details(started_at: float) -> dict[str, Any]:
    return {
        "version": __version__,
        "uptime_s": round(time.monotonic() - started_at, 1),
        "pid": os.getpid(),
    }
