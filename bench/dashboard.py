"""Dashboard pages at 100,000 streams / 1,000 workers: time per page, server CPU per page.

Starts an embedded PostgreSQL and Valkey (bench/_servers.py), loads --streams streams,
--workers live workers (capacity --capacity, lease an hour ahead, 1 % of them instances
of the original protocol) and assigns every stream but --unplaced ones round robin with
plain SQL, then writes --events events spread over the last hour (grants, moves,
catalog changes, one rare kind) so that the event queries and the chart have a realistic
log. One `python -m streamorch serve` then answers; each page is fetched --requests
times, one request at a time over a keep-alive connection, after 3 warm-up requests.

Latency is measured by the client on loopback (HTTP included): an upper bound of the
server's own time. The overview's status and the worker list are shared between the
pages open on a replica for 2 s (the chart for 30 s): most timed requests find them
computed, and the max is the request that computed them. Server CPU per request is the server process's CPU over the page's
requests, divided by their number (the reconciler is idle: nothing changes).

Goal (docs/benchmarks.md): every page ≤ 300 ms at 100,000 streams and 1,000 workers.

    .venv/bin/python bench/dashboard.py [--streams 100000] [--workers 1000] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import BenchError, Stack, machine, percentile, run_bench

GOAL_S = 0.3


def load(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO streams (key, url, labels) SELECT 'radio:' || lpad(i::text, 6, '0'), "
            "'http://radio.example/' || i || '.mp3', jsonb_build_object('genre', 'g' || i %% 40) "
            "FROM generate_series(0, %s - 1) i",
            (args.streams,),
        )
        conn.execute(
            "INSERT INTO workers (name, capacity, labels, lease_expires_at) "
            "SELECT 'fp-' || lpad(i::text, 4, '0'), %s, CASE WHEN i %% 100 = 0 "
            "THEN '{\"protocol\": \"compat\"}'::jsonb ELSE jsonb_build_object('region', "
            "CASE WHEN i %% 2 = 0 THEN 'eu' ELSE 'us' END) END, now() + interval '1 hour' "
            "FROM generate_series(0, %s - 1) i",
            (args.capacity, args.workers),
        )
        conn.execute(
            "INSERT INTO assignments (stream_key, worker_id, token, reason) "
            "SELECT s.key, w.id, nextval('fencing_tokens'), 'placed' "
            "FROM (SELECT key, row_number() OVER (ORDER BY key) - 1 AS n FROM streams) s "
            "JOIN (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n FROM workers) w "
            "ON w.n = s.n %% %s WHERE s.n >= %s",
            (args.workers, args.unplaced),
        )
        # The log: mostly grants and moves, a few catalog changes, one rare kind.
        conn.execute(
            "INSERT INTO events (at, kind, stream_key, worker_id, reason, details) "
            "SELECT now() - make_interval(secs => 3600.0 * (%s - i) / %s), "
            "CASE WHEN i %% 10 = 0 THEN 'moved' WHEN i %% 97 = 0 THEN 'stream_updated' "
            "ELSE 'assigned' END, "
            "'radio:' || lpad((i %% %s)::text, 6, '0'), w.id, 'placed', "
            "jsonb_build_object('token', i) FROM generate_series(1, %s) i "
            "JOIN (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n FROM workers) w "
            "ON w.n = i %% %s ORDER BY i",
            (args.events, args.events, args.streams, args.events, args.workers),
        )
        conn.execute(
            "INSERT INTO events (kind, worker_id, reason) "
            "SELECT 'worker_joined', id, 'registered' FROM workers ORDER BY name LIMIT 3"
        )
        conn.execute("UPDATE cluster SET generation = generation + 1")
        conn.execute("ANALYZE")
        worker = conn.execute("SELECT id FROM workers ORDER BY name OFFSET 7 LIMIT 1").fetchone()
    return {"load_s": round(time.perf_counter() - t0, 1), "worker_id": str(worker[0])}


def pages(worker_id: str, args: argparse.Namespace) -> list[tuple[str, str, dict[str, str]]]:
    fragment = {"HX-Request": "true"}
    middle = f"radio:{args.streams // 2:06d}"
    return [
        ("GET /v1/status (the API: what the overview shows)", "/v1/status", {}),
        ("overview", "/ui", {}),
        ("overview, live fragment (the poll)", "/ui", fragment),
        ("overview's chart (after the page, every 30 s)", "/ui/activity", fragment),
        ("workers (live, first 50 of 1,000)", "/ui/workers", {}),
        ("workers, live fragment (the poll)", "/ui/workers", fragment),
        ("workers, all, page 11", "/ui/workers?show=all&offset=500", {}),
        ("worker page (its 100 streams, events)", f"/ui/workers/{worker_id}", {}),
        ("worker, live fragment (the poll)", f"/ui/workers/{worker_id}", fragment),
        ("streams, first page", "/ui/streams", {}),
        ("streams, page after a cursor", f"/ui/streams?cursor={middle}", {}),
        ("streams, search 'radio:0999' (100 hits)", "/ui/streams?q=radio:0999", {}),
        ("streams, search with no match (whole key scan)", "/ui/streams?q=nothing", {}),
        ("streams, state=unassigned", "/ui/streams?state=unassigned", {}),
        ("streams, state=moving (none: whole scan)", "/ui/streams?state=moving", {}),
        ("stream page", f"/ui/stream?key={middle}", {}),
        ("stream, live fragment (the poll)", f"/ui/stream?key={middle}", fragment),
        ("stream explanation (plans the fleet)", f"/ui/explain?key={middle}", {}),
        ("GET /v1/streams/{key}/explain (the API, same work)", f"/v1/streams/{middle}/explain", {}),
        ("events, newest", "/ui/events", {}),
        ("events, live fragment (the poll)", "/ui/events", fragment),
        ("events, kind=worker_joined (rare)", "/ui/events?kind=worker_joined", {}),
        ("events, one stream", f"/ui/events?stream={middle}", {}),
        ("events, one worker", f"/ui/events?worker={worker_id}", {}),
    ]


# Pages whose data is shared between open pages for a while (api/ui/views.py): also
# timed cold, each request after the shared value expired.
COLD = [
    ("overview, cold (status computed)", "/ui", 2.0),
    ("workers, cold (fleet read)", "/ui/workers", 2.0),
    ("overview's chart, cold (the hour counted)", "/ui/activity", 30.0),
]


def timed(
    client: httpx.Client,
    server: Any,
    path: str,
    headers: dict[str, str],
    n: int,
    pause: float = 0.0,
) -> tuple[list[float], float, int]:
    cpu0 = server.cpu_seconds()
    times, size = [], 0
    for _ in range(n):
        if pause:
            time.sleep(pause)
        t0 = time.perf_counter()
        response = client.get(path, headers=headers)
        times.append(time.perf_counter() - t0)
        if response.status_code != 200:
            raise BenchError(f"{path}: {response.status_code} {response.text[:300]}")
        size = len(response.content)
    times.sort()
    return times, (server.cpu_seconds() - cpu0) / n, size


def row(name: str, path: str, times: list[float], cpu: float, size: int) -> dict[str, Any]:
    found = {
        "page": name,
        "path": path,
        "p50_ms": round(1000 * percentile(times, 50), 1),
        "max_ms": round(1000 * times[-1], 1),
        "cpu_ms": round(1000 * cpu, 1),
        "kb": round(size / 1024, 1),
        "met": times[-1] <= GOAL_S,
    }
    print(
        f"  {name:<52} p50 {found['p50_ms']:7.1f} ms  max {found['max_ms']:7.1f} ms  "
        f"CPU {found['cpu_ms']:6.1f} ms  {found['kb']:6.1f} KB",
        flush=True,
    )
    return found


def measure(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "pages": []}
    with Stack() as stack:
        loaded = load(stack, args)
        result["load_s"] = loaded["load_s"]
        print(f"loaded in {loaded['load_s']} s", flush=True)
        server = stack.serve(LEASE_TTL="3600", LOG_LEVEL="WARNING")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            # Wait for the first (full) reconcile pass, so that the reconciler is idle.
            deadline = time.monotonic() + 60
            while client.get("/v1/status").json()["reconciler"]["passes"] < 2:
                if time.monotonic() > deadline:
                    raise BenchError("no reconcile pass within 60 s")
                time.sleep(0.2)
            for name, path, headers in pages(loaded["worker_id"], args):
                for _ in range(3):
                    timed(client, server, path, headers, 1)  # warm-up
                times, cpu, size = timed(client, server, path, headers, args.requests)
                result["pages"].append(row(name, path, times, cpu, size))
            for name, path, ttl in COLD:
                # CPU over the pauses too: an upper bound (the reconciler idles meanwhile).
                times, cpu, size = timed(client, server, path, {}, args.cold, pause=ttl + 0.2)
                result["pages"].append(row(name, path, times, cpu, size))
    return result


def report(result: dict[str, Any]) -> None:
    print(f"\n{'page':<52} {'p50 ms':>8} {'max ms':>8} {'CPU ms':>8} {'KB':>7}  ≤ 300 ms")
    for row in result["pages"]:
        print(
            f"{row['page']:<52} {row['p50_ms']:>8} {row['max_ms']:>8} {row['cpu_ms']:>8} "
            f"{row['kb']:>7}  {'yes' if row['met'] else 'NO'}"
        )
    missed = [r["page"] for r in result["pages"] if not r["met"]]
    print(f"\ngoal missed by: {', '.join(missed)}" if missed else "\nevery page within 300 ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1_000)
    parser.add_argument("--capacity", type=int, default=150)
    parser.add_argument("--unplaced", type=int, default=500, help="streams left unassigned")
    parser.add_argument("--events", type=int, default=300_000, help="events in the last hour")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
    parser.add_argument("--cold", type=int, default=3, help="cold requests per shared page")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    return run_bench(lambda: measure(args), report, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
