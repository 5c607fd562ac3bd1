"""Reconcile passes at 100,000 streams / 1,000 workers, in process (no HTTP).

Starts an embedded PostgreSQL (bench/_servers.py), loads --streams streams (weight 1)
and --workers live workers (capacity --capacity, lease an hour ahead) with plain SQL,
and times `core.engine.reconcile_pass` directly, each pass being one transaction as in
the server:

  initial      nothing placed yet: every stream is granted
  no change    nothing changed since the last pass: planning is skipped (the
               reconciler's every-second case)
  no change, planned
               the same, but with an unknown generation, so the whole snapshot is read
               and planned (what any catalog or fleet change costs)
  10% expired  the leases of 10 % of the workers set in the past: they are expired,
               their streams released and placed on the others
  join         one worker added to the converged fleet; passes run until nothing moves.
               After every pass the workers "report" (SQL): `running` = their granted
               streams, so revoked streams count as stopped and moves finish. Counts
               the moves against the optimum ceil(S / (M + 1)).

Before each timed pass `cluster.last_pass_at` is set to now(), as it is when passes
run every second (otherwise a pass after a long set-up would treat it as a
control-plane outage and extend every lease). Peak RSS is this process's
`ru_maxrss` (the load is SQL inside PostgreSQL, so it is the pass's own memory plus
the interpreter). `--breakdown` prints where each pass's time went (SQL statements
by name, snapshot, plan).

Goals (docs/benchmarks.md): no-change pass ≤ 0.5 s, 10% expired ≤ 2 s, peak RSS
≤ 500 MB.

    .venv/bin/python bench/reconcile.py [--streams 100000] [--workers 1000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import BenchError, Stack, machine, run_bench

from streamorch.backing.endpoints import postgres_target
from streamorch.config import load_settings
from streamorch.core import engine
from streamorch.domain import placement
from streamorch.domain.models import Policy
from streamorch.domain.records import PassResult
from streamorch.store.database import DatabaseManager
from streamorch.store.passes import PostgresPassTx
from streamorch.store.postgres import EngineStore
from streamorch.store.queries import _all as all_queries

GOALS = {"no_change_planned_s": 0.5, "expired_10pct_s": 2.0, "peak_rss_mb": 500.0}
MAX_JOIN_PASSES = 50
# Every live worker reports running exactly its granted streams (revoked ones stopped).
REPORT = (
    "UPDATE workers w SET last_heartbeat = now(), "
    "running = coalesce((SELECT array_agg(a.stream_key) FROM assignments a "
    "WHERE a.worker_id = w.id AND a.state = 'granted'), '{}') "
    "WHERE w.status IN ('active', 'draining')"
)
REPORT_ACKED = REPORT.replace(
    "SET last_heartbeat = now(), ", "SET last_heartbeat = now(), acked_version = w.version, "
)


class Breakdown:
    """Time per SQL statement name (execute + fetch), snapshot and plan, per pass."""

    def __init__(self) -> None:
        self.times: dict[str, float] = collections.defaultdict(float)
        self.names = {text: name for name, text in all_queries().items()}
        self._last = "?"

    def install(self) -> None:
        cursor = psycopg.AsyncCursor
        breakdown = self

        def timed(method: Any, execute: bool) -> Any:
            async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                if execute:
                    query = args[0] if args else kwargs.get("query")
                    breakdown._last = breakdown.names.get(str(query), str(query)[:40])
                t0 = time.perf_counter()
                try:
                    return await method(self, *args, **kwargs)
                finally:
                    breakdown.times["sql " + breakdown._last] += time.perf_counter() - t0

            return wrapper

        cursor.execute = timed(cursor.execute, True)  # type: ignore[method-assign]
        cursor.fetchall = timed(cursor.fetchall, False)  # type: ignore[method-assign]
        cursor.fetchone = timed(cursor.fetchone, False)  # type: ignore[method-assign]
        plan = placement.plan

        def timed_plan(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return plan(*args, **kwargs)
            finally:
                self.times["python placement.plan"] += time.perf_counter() - t0

        placement.plan = timed_plan  # type: ignore[assignment]
        snapshot = PostgresPassTx.snapshot

        async def timed_snapshot(tx: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await snapshot(tx)
            finally:
                self.times["snapshot total (its SQL included above)"] += time.perf_counter() - t0

        PostgresPassTx.snapshot = timed_snapshot  # type: ignore[method-assign]

    def take(self, top: int = 8) -> list[tuple[str, float]]:
        items = sorted(self.times.items(), key=lambda kv: -kv[1])[:top]
        self.times.clear()
        return [(k, round(v, 3)) for k, v in items]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def run(args: argparse.Namespace, stack: Stack, breakdown: Breakdown | None) -> dict:
    settings = load_settings(
        {"DATABASE_URL": stack.database_url, "STREAMORCH_DATA_DIR": str(stack.workspace / "x")}
    )
    db = DatabaseManager(postgres_target(settings), settings)
    await db.connect_with_retry()
    store = EngineStore(db)
    policy = Policy(0.0, args.max_moves)
    result: dict[str, Any] = {}

    async def sql(query: str, params: Any = None) -> list[tuple]:
        async with db.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []

    has_acks = bool(
        await sql(
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_name = 'workers' AND column_name = 'acked_version'"
        )
    )
    # With acknowledged versions (migration 0005), a stop report must also acknowledge
    # the version that dropped the stream.
    report_sql = REPORT_ACKED if has_acks else REPORT

    async def report() -> None:
        """Every live worker reports running exactly its granted streams."""
        await sql(report_sql)

    async def timed_pass(seen: int | None) -> tuple[float, PassResult]:
        await sql("UPDATE cluster SET last_pass_at = now()")
        if breakdown is not None:
            breakdown.take()  # count only the pass
        t0 = time.perf_counter()
        r = await engine.reconcile_pass(store, policy, seen, lease_ttl=10.0)
        took = time.perf_counter() - t0
        if not r.ran:
            raise BenchError("the reconcile lock was taken")
        return took, r

    def record(name: str, took: float, r: PassResult) -> None:
        row = {
            "s": round(took, 3),
            "planned": r.planned,
            "grants": len(r.plan.grants),
            "revokes": len(r.plan.revokes),
            "expired": len(r.expired),
            "finished": r.finished,
            "rss_mb_so_far": round(rss_mb(), 1),
        }
        if breakdown is not None:
            row["breakdown"] = breakdown.take()
        result[name] = row
        print(
            f"  {name:<26} {took:7.3f} s  grants {row['grants']:>6}  revokes "
            f"{row['revokes']:>4}  expired {row['expired']:>4}  finished {row['finished']:>4}  "
            f"peak RSS {row['rss_mb_so_far']:.0f} MB",
            flush=True,
        )
        for what, secs in row.get("breakdown", []):
            print(f"      {secs:7.3f} s  {what}")

    # -- load -------------------------------------------------------------------
    t0 = time.perf_counter()
    await sql(
        "INSERT INTO streams (key, url) SELECT 'r-s' || lpad(i::text, 6, '0'), "
        "'http://radio.example/' || i || '.mp3' FROM generate_series(0, %s - 1) i",
        (args.streams,),
    )
    await sql(
        "INSERT INTO workers (name, capacity, lease_expires_at) "
        "SELECT 'r-w' || lpad(i::text, 4, '0'), %s, now() + interval '1 hour' "
        "FROM generate_series(0, %s - 1) i",
        (args.capacity, args.workers),
    )
    await sql("ANALYZE")
    result["load_s"] = round(time.perf_counter() - t0, 1)
    result["rss_mb_before_passes"] = round(rss_mb(), 1)
    print(
        f"loaded {args.streams} streams and {args.workers} workers in {result['load_s']} s "
        f"(peak RSS so far {result['rss_mb_before_passes']:.0f} MB)",
        flush=True,
    )
    if breakdown is not None:
        breakdown.take()

    # -- (a) initial placement ------------------------------------------------------
    took, r = await timed_pass(None)
    record("initial", took, r)
    await report()
    # Settle: passes until one plans nothing (there may be a rebalance tail).
    for _ in range(MAX_JOIN_PASSES):
        took, r = await timed_pass(None)
        await report()
        if r.plan.empty and not r.finished:
            break
    generation = r.generation
    if breakdown is not None:
        breakdown.take()

    # -- (b) nothing changed --------------------------------------------------------
    took, r = await timed_pass(generation)
    record("no change", took, r)
    took, r = await timed_pass(None)
    record("no change, planned", took, r)
    result["balance_after_initial"] = await balance(sql)

    # -- (c) 10% of the workers expire ----------------------------------------------
    n_expire = max(1, args.workers // 10)
    await sql(
        "UPDATE workers SET lease_expires_at = now() - interval '1 second' "
        "WHERE id IN (SELECT id FROM workers WHERE status = 'active' ORDER BY name LIMIT %s)",
        (n_expire,),
    )
    took, r = await timed_pass(generation)
    record("10% expired", took, r)
    await report()
    result["balance_after_expiry"] = await balance(sql)

    # -- join: one worker added to the converged fleet ----------------------------------
    for _ in range(MAX_JOIN_PASSES):  # converge first
        took, r = await timed_pass(None)
        await report()
        if r.plan.empty and not r.finished:
            break
    live = (await sql("SELECT count(*) FROM workers WHERE status = 'active'"))[0][0]
    await sql(
        "INSERT INTO workers (name, capacity, lease_expires_at) "
        "VALUES ('r-joiner', %s, now() + interval '1 hour')",
        (args.capacity,),
    )
    await sql("UPDATE cluster SET generation = generation + 1")  # as register() does
    moves, passes, seconds, slowest = 0, 0, 0.0, 0.0
    for _ in range(MAX_JOIN_PASSES):
        took, r = await timed_pass(None)
        passes += 1
        seconds += took
        slowest = max(slowest, took)
        moves += sum(1 for rv in r.plan.revokes if rv.reason == "rebalance")
        await report()
        if r.plan.empty and not r.finished:
            break
    else:
        raise BenchError(f"join did not converge in {MAX_JOIN_PASSES} passes")
    joiner = (
        await sql(
            "SELECT count(*) FROM assignments a JOIN workers w ON w.id = a.worker_id "
            "WHERE w.name = 'r-joiner'"
        )
    )[0][0]
    optimum = math.ceil(args.streams / (live + 1))
    result["join"] = {
        "live_workers_before": live,
        "moves": moves,
        "optimum": optimum,
        "joiner_streams": joiner,
        "passes": passes,
        "pass_s_total": round(seconds, 3),
        "slowest_pass_s": round(slowest, 3),
    }
    result["balance_after_join"] = await balance(sql)
    print(
        f"  join: {moves} moves (optimum ceil({args.streams}/{live + 1}) = {optimum}), the new "
        f"worker runs {joiner}; {passes} passes, {seconds:.2f} s of passes, slowest "
        f"{slowest:.3f} s",
        flush=True,
    )
    result["peak_rss_mb"] = round(rss_mb(), 1)
    await db.close_connection_safely()
    return result


async def balance(sql: Any) -> dict[str, Any]:
    rows = await sql(
        "SELECT w.capacity, count(a.stream_key) FROM workers w "
        "LEFT JOIN assignments a ON a.worker_id = w.id AND a.state = 'granted' "
        "WHERE w.status = 'active' GROUP BY w.id"
    )
    utilisation = [n / c for c, n in rows]
    mean = sum(utilisation) / len(utilisation)
    loads = [n for _, n in rows]
    return {
        "max_utilisation": round(max(utilisation), 4),
        "mean_utilisation": round(mean, 4),
        "max_over_mean": round(max(utilisation) / mean, 4),
        "min_load": min(loads),
        "max_load": max(loads),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    breakdown = Breakdown() if args.breakdown else None
    if breakdown is not None:
        breakdown.install()
    with Stack(durable=not args.fast_pg, valkey=False) as stack:
        inner = asyncio.run(run(args, stack, breakdown))
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["bench/reconcile.py", *sys.argv[1:]]),
        "streams": args.streams,
        "workers": args.workers,
        "capacity": args.capacity,
        "max_moves_per_pass": args.max_moves,
        "durable_postgres": not args.fast_pg,
        **inner,
        "goals": GOALS,
    }
    result["goals_met"] = {
        "no_change_planned_s": result["no change, planned"]["s"] <= GOALS["no_change_planned_s"],
        "expired_10pct_s": result["10% expired"]["s"] <= GOALS["expired_10pct_s"],
        "peak_rss_mb": result["peak_rss_mb"] <= GOALS["peak_rss_mb"],
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1_000)
    parser.add_argument("--capacity", type=int, default=150)
    parser.add_argument("--max-moves", type=int, default=100, help="MAX_MOVES_PER_PASS")
    parser.add_argument("--breakdown", action="store_true", help="time SQL and planning")
    parser.add_argument(
        "--fast-pg", action="store_true", help="PostgreSQL with fsync/synchronous_commit off"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if (args.workers - args.workers // 10) * args.capacity < args.streams:
        parser.error("after 10% expire the others could not hold every stream: raise --capacity")
    return run_bench(lambda: measure(args), report, as_json=args.json)


def report(result: dict[str, Any]) -> None:
    b = result["balance_after_join"]
    print(
        f"summary: no change {result['no change']['s']:.3f} s (planning skipped), "
        f"{result['no change, planned']['s']:.3f} s planned (goal ≤ 0.5 s: "
        f"{'met' if result['goals_met']['no_change_planned_s'] else 'MISSED'}); 10% expired "
        f"{result['10% expired']['s']:.3f} s (goal ≤ 2 s: "
        f"{'met' if result['goals_met']['expired_10pct_s'] else 'MISSED'}); peak RSS "
        f"{result['peak_rss_mb']:.0f} MB (goal ≤ 500 MB: "
        f"{'met' if result['goals_met']['peak_rss_mb'] else 'MISSED'}); balance after join: "
        f"max/mean utilisation {b['max_over_mean']} (loads {b['min_load']}–{b['max_load']})"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
