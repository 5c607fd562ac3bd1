"""Soak: a fleet under constant churn for a chosen time, as a rolling deploy would cause.

2,000 streams on 40 workers (simulated: the worker protocol of tests/support/simworker.py).
Every `--churn-every` seconds the oldest worker goes, alternately by a crash (its
lease expires) and by a drain (it reports draining, its streams move away, then it
deregisters), and a worker with a new name takes its place. Every `--sample-every`
seconds the script records the server's RSS, the database size, row counts, the
latency of the list calls (client side, 5 calls each) and the heartbeat latency (the
server's own histogram, between samples).

`--month` first fills the history to what a month at the same churn leaves behind
(130,000 departed workers and 27 million events, spread over 30 days; scale it with
`--prefill-workers` / `--prefill-events`), then runs the same churn: retention catches up
while the fleet runs, and the fleet must stay up (0 leases lost). `--month --steady` instead
fills only what retention keeps a month later (workers departed within the last day, events
of the last 7 days): the state of a fleet that ran with retention all along.

    .venv/bin/python bench/soak.py --duration 600
    .venv/bin/python bench/soak.py --month --prefill-events 3000000 --duration 600
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._servers import Server, Stack, machine, percentile, run_bench
from tests.support.fleet import Fleet
from tests.support.simworker import SimWorker
from tests.support.waiting import wait_until

HEARTBEAT = "/v1/workers/{worker_id}/heartbeat"
BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
LISTS = {
    "workers (live)": ("/v1/workers", {}),
    "workers (all, 1000)": ("/v1/workers", {"status": "all", "limit": 1000}),
    "events (newest 1000)": ("/v1/events", {"newest": "true", "limit": 1000}),
    "streams (1000)": ("/v1/streams", {"limit": 1000}),
    "status": ("/v1/status", {}),
}
MONTH_WORKERS = 130_000
MONTH_EVENTS = 27_000_000

PREFILL_WORKERS = """
INSERT INTO workers (name, capacity, status, labels, lease_expires_at, registered_at,
                     last_heartbeat)
SELECT 'old-' || i, 50, CASE WHEN i %% 2 = 0 THEN 'left' ELSE 'expired' END, '{}',
       now() - make_interval(secs => %(span)s * i / %(n)s),
       now() - make_interval(secs => %(span)s * i / %(n)s + 3600),
       now() - make_interval(secs => %(span)s * i / %(n)s)
  FROM generate_series(1, %(n)s) i
"""
# Oldest first, so ids grow with time as they do in a live log.
PREFILL_EVENTS = """
INSERT INTO events (at, kind, stream_key, worker_id, worker_name, reason, details)
SELECT now() - make_interval(secs => %(span)s * (%(n)s - i) / %(n)s),
       (ARRAY['assigned', 'revoked', 'stopped', 'moved'])[1 + i %% 4],
       's' || (i %% 2000), gen_random_uuid(), 'old-' || (i %% 130000), 'placed',
       jsonb_build_object('token', i)
  FROM generate_series(%(first)s, %(last)s) i
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of churn")
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=40)
    parser.add_argument("--churn-every", type=float, default=20)
    parser.add_argument("--sample-every", type=float, default=30)
    parser.add_argument("--month", action="store_true", help="pre-fill a month of history")
    parser.add_argument("--prefill-workers", type=int, default=MONTH_WORKERS)
    parser.add_argument("--prefill-events", type=int, default=MONTH_EVENTS)
    parser.add_argument(
        "--steady",
        action="store_true",
        help="with --month: prefill only what retention keeps (workers departed within a "
        "day, events within 7 days): the state a month later with retention on",
    )
    parser.add_argument(
        "--setting", action="append", default=[], help="KEY=VALUE for the server, repeatable"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    return run_bench(lambda: measure(args), report, as_json=args.json)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    settings = dict(s.split("=", 1) for s in args.setting)
    with Stack() as stack:
        prefill_s = None
        if args.month:
            started = time.monotonic()
            spans = (86400.0, 7 * 86400.0) if args.steady else (30 * 86400.0, 30 * 86400.0)
            prefill(stack, args.prefill_workers, args.prefill_events, *spans)
            prefill_s = round(time.monotonic() - started, 1)
        server = stack.serve(LOG_LEVEL="WARNING", **settings)
        result = asyncio.run(soak(stack, server, args))
    result.update(
        machine=machine(),
        month=args.month,
        prefill={
            "workers": args.prefill_workers,
            "events": args.prefill_events,
            "steady": args.steady,
            "s": prefill_s,
        }
        if args.month
        else None,
        settings=settings,
        duration_s=args.duration,
        churn_every_s=args.churn_every,
    )
    return result


def prefill(
    stack: Stack, workers: int, events: int, workers_span: float, events_span: float
) -> None:
    """Departed workers spread over `workers_span` seconds, events over `events_span`."""
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        conn.execute(PREFILL_WORKERS, {"n": workers, "span": workers_span})
        step = 1_000_000
        for first in range(1, events + 1, step):
            last = min(events, first + step - 1)
            params = {"n": events, "first": first, "last": last, "span": events_span}
            conn.execute(PREFILL_EVENTS, params)
            print(f"prefill: {last:,} of {events:,} events", file=sys.stderr)
        conn.execute("VACUUM ANALYZE events")
        conn.execute("VACUUM ANALYZE workers")


async def soak(stack: Stack, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    churns = {"crash": 0, "drain": 0}
    drain_s: list[float] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        streams = [
            {"key": f"s{i}", "url": f"http://radio.example/{i}"} for i in range(args.streams)
        ]
        assert (await client.post("/v1/streams/bulk", json={"streams": streams})).is_success
        capacity = -(-args.streams * 5 // (args.workers * 4))  # 25 % headroom
        async with Fleet(server.url, long_poll=True) as fleet:
            order: list[SimWorker] = await fleet.start(args.workers, capacity=capacity)
            next_name = args.workers

            async def placed() -> bool:
                s = (await client.get("/v1/status")).json()["streams"]
                return s["assigned"] == args.streams and s["moving"] == 0

            await wait_until(placed, timeout=120, what="every stream placed")
            first = await scrape(client)
            previous = first
            started = time.monotonic()
            next_churn, next_sample = started + args.churn_every, started
            while time.monotonic() - started < args.duration:
                now = time.monotonic()
                if now >= next_sample:
                    sample, previous = await take_sample(stack, server, client, previous)
                    sample["t_s"] = round(now - started)
                    samples.append(sample)
                    print(f"soak: {sample}", file=sys.stderr)
                    next_sample += args.sample_every
                if now >= next_churn:
                    leaving = order.pop(0)
                    kind = "crash" if sum(churns.values()) % 2 == 0 else "drain"
                    churns[kind] += 1
                    if kind == "crash":
                        await leaving.crash()
                    else:
                        drain_s.append(await drain(client, leaving))
                    name = f"w{next_name:05d}"
                    next_name += 1
                    order.append(await fleet.add(name, capacity=capacity))
                    next_churn += args.churn_every
                await asyncio.sleep(0.2)
            last = await scrape(client)
            problems = fleet.problems()
            conflicts = sum(len(w.conflicts) for w in fleet.workers.values() if not w.dead)
    return {
        "samples": samples,
        "churns": churns,
        "drain_s": summary(drain_s),
        "heartbeat_s": histogram_summary(first, last),
        "heartbeats_rejected": counter(last, "streamorch_heartbeats_total", result="rejected"),
        # Crashed workers' leases expire by design; any other expiry is a lease lost.
        "leases_lost": max(
            0.0, counter(last, "streamorch_lease_expirations_total") - churns["crash"]
        ),
        "live_worker_conflicts": conflicts,
        "problems": problems[:20],
        "lists_s": {
            name: summary([v for s in samples for v in s["lists_s"][name]]) for name in LISTS
        },
    }


async def drain(client: httpx.AsyncClient, worker: SimWorker) -> float:
    """The SDK's SIGTERM: report draining, wait until it runs nothing, deregister."""
    started = time.monotonic()
    worker.set_draining()
    with contextlib.suppress(AssertionError):
        await wait_until(lambda: not worker.running, timeout=30, what="drained")
    took = time.monotonic() - started
    await worker.stop()  # no heartbeat after the deregistration (it would get 409)
    await client.delete(f"/v1/workers/{worker.worker_id}", params={"force": "true"})
    return took


async def take_sample(
    stack: Stack, server: Server, client: httpx.AsyncClient, previous: dict
) -> tuple[dict[str, Any], dict]:
    lists: dict[str, list[float]] = {}
    for name, (path, params) in LISTS.items():
        lists[name] = []
        for _ in range(5):
            t0 = time.perf_counter()
            response = await client.get(path, params=params)
            lists[name].append(time.perf_counter() - t0)
            assert response.status_code == 200, response.text
    metrics = await scrape(client)
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        db_mb = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**20
        workers = conn.execute("SELECT count(*) FROM workers").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        sizes = dict(
            conn.execute(
                "SELECT relname, pg_total_relation_size(oid) / 1048576.0 FROM pg_class "
                "WHERE relname IN ('events', 'workers')"
            ).fetchall()
        )
    sample = {
        "load_average_1m": round(os.getloadavg()[0], 1),  # the machine may be shared
        "rss_mb": round(server.rss_mb(), 1),
        "db_mb": round(db_mb, 1),
        "events_mb": round(float(sizes.get("events", 0)), 1),
        "workers_mb": round(float(sizes.get("workers", 0)), 2),
        "worker_rows": workers,
        "event_rows": events,
        "heartbeat_p99_s": histogram_summary(previous, metrics)["p99_bucket"],
        "lists_s": lists,
    }
    return sample, metrics


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple], float]:
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def counter(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def histogram_summary(before: dict, after: dict) -> dict[str, Any]:
    """Heartbeats between two scrapes: count, and the bucket bounds holding 50 / 99 / 100 %."""

    def count(le: str | None) -> float:
        labels = {"method": "POST", "route": HEARTBEAT, **({"le": le} if le else {})}
        name = "streamorch_http_request_duration_seconds_" + ("bucket" if le else "count")
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    total = count(None)
    out: dict[str, Any] = {"count": int(total)}
    for label, share in (("p50_bucket", 0.5), ("p99_bucket", 0.99), ("max_bucket", 1.0)):
        out[label] = next((b for b in BUCKETS if total and count(str(b)) >= share * total), None)
    return out


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": round(percentile(ordered, 50), 4),
        "p99": round(percentile(ordered, 99), 4),
        "max": round(ordered[-1], 4),
    }


def report(result: dict[str, Any]) -> None:
    mode = "a month later" if result["month"] else "day 1"
    print(f"soak ({mode}): {result['duration_s']:g} s, churn every {result['churn_every_s']:g} s")
    if result["prefill"]:
        print(f"  prefilled: {result['prefill']}")
    first, last = result["samples"][0], result["samples"][-1]
    for key in ("rss_mb", "db_mb", "events_mb", "workers_mb", "worker_rows", "event_rows"):
        print(f"  {key}: {first[key]} → {last[key]}")
    print(f"  churns: {result['churns']}, drains: {result['drain_s']}")
    print(f"  heartbeats (server): {result['heartbeat_s']}")
    print(
        f"  leases lost: {result['leases_lost']:g}, rejected heartbeats: "
        f"{result['heartbeats_rejected']:g}, conflicts on live workers: "
        f"{result['live_worker_conflicts']}, problems: {len(result['problems'])}"
    )
    for name, stats in result["lists_s"].items():
        print(f"  {name}: {stats}")


if __name__ == "__main__":
    raise SystemExit(main())
