"""Event-loop CPU of the largest page of every list, on a month of history.

The server runs in this process (the real app behind httpx's ASGI transport) on an
embedded PostgreSQL holding 130,000 departed workers, 1,000,000 events and 2,000
streams. Each list call is timed by wall clock and by this thread's CPU time: the CPU
is what the call costs the event loop, where heartbeats wait for it, and unlike wall
time it does not grow when other jobs share the machine.

    .venv/bin/python bench/pages.py --calls 20
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._servers import Stack, machine, percentile, run_bench
from bench.soak import PREFILL_EVENTS, PREFILL_WORKERS

from streamorch.api.app import create_app
from streamorch.config import load_settings

PAGES = {
    "GET /v1/workers (live)": ("/v1/workers", {}),
    "GET /v1/workers?status=all&limit=1000": ("/v1/workers", {"status": "all", "limit": 1000}),
    "GET /v1/workers?name=": ("/v1/workers", {"name": "old-65000"}),
    "GET /v1/events?limit=1000": ("/v1/events", {"limit": 1000}),
    "GET /v1/events?newest=true&limit=1000": ("/v1/events", {"newest": "true", "limit": 1000}),
    "GET /v1/streams?limit=1000": ("/v1/streams", {"limit": 1000}),
    "GET /v1/status": ("/v1/status", {}),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="calls per page")
    parser.add_argument("--workers", type=int, default=130_000, help="departed workers")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    return run_bench(lambda: measure(args), report, as_json=args.json)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with Stack() as stack:
        with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
            month = 30 * 86400.0
            conn.execute(PREFILL_WORKERS, {"n": args.workers, "span": month})
            params = {"n": args.events, "first": 1, "last": args.events, "span": month}
            conn.execute(PREFILL_EVENTS, params)
            conn.execute(
                "INSERT INTO streams (key, url) SELECT 's' || i, 'http://r/' || i "
                "FROM generate_series(1, 2000) i"
            )
            conn.execute("VACUUM ANALYZE")
        settings = load_settings(
            {
                "DATABASE_URL": stack.database_url,
                "REDIS_URL": stack.redis_url,
                "STREAMORCH_DATA_DIR": str(stack.workspace / "inproc"),
                "LOG_LEVEL": "WARNING",
                "RETENTION_INTERVAL": "86400",
                "WORKER_RETENTION": "0",
                "EVENT_RETENTION": "0",
                "EVENT_MAX_COUNT": "0",
            }
        )
        pages = asyncio.run(time_pages(settings, args.calls))
    return {
        "pages": pages,
        "history": {"workers": args.workers, "events": args.events},
        "machine": machine(),
    }


async def time_pages(settings, calls: int) -> dict[str, Any]:
    app = create_app(settings)
    out: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://o") as client:
            for name, (path, params) in PAGES.items():
                wall, cpu, size = [], [], 0
                for _ in range(calls):
                    w0, c0 = time.perf_counter(), time.thread_time()
                    response = await client.get(path, params=params)
                    cpu.append(time.thread_time() - c0)
                    wall.append(time.perf_counter() - w0)
                    assert response.status_code == 200, response.text
                    size = len(response.content)
                cpu.sort()
                wall.sort()
                out[name] = {
                    "cpu_ms_p50": round(percentile(cpu, 50) * 1000, 1),
                    "cpu_ms_max": round(cpu[-1] * 1000, 1),
                    "wall_ms_p50": round(percentile(wall, 50) * 1000, 1),
                    "bytes": size,
                }
                print(f"{name}: {out[name]}", file=sys.stderr)
    return out


def report(result: dict[str, Any]) -> None:
    print(f"history: {result['history']}")
    for name, stats in result["pages"].items():
        print(f"  {name}: {stats}")


if __name__ == "__main__":
    raise SystemExit(main())
