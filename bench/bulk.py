"""`POST /v1/streams/bulk` with 100,000 streams against a running server.

Starts embedded PostgreSQL + Valkey and one `streamorch serve` (bench/_servers.py),
then sends, each body JSON-encoded beforehand (encoding is not timed):

  create      --streams new streams, mode upsert (every one created)
  same again  the identical body (nothing created, nothing updated)
  replace     mode replace with 90 % of those streams and 10 % new ones (10 % created,
              10 % deleted)
  update      mode upsert with every url changed (every one updated)

Each call is timed from sending the request to the complete answer; the answer's
counts are checked. Also reported: the body size, the server's CPU time during the
call and the server's largest RSS while it ran (sampled every 20 ms). No worker is
registered, so the reconciler only finds the streams unplaceable.

Goal (docs/benchmarks.md): the 100,000-stream call ≤ 10 s.

    .venv/bin/python bench/bulk.py [--streams 100000] [--runs 1] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import BenchError, Server, Stack, machine, run_bench

GOAL_S = 10.0


def body(keys: list[str], mode: str, url: str = "http://radio.example/{}.mp3") -> bytes:
    streams = [
        {"key": k, "url": url.format(k), "weight": 1, "labels": {"genre": "news"}} for k in keys
    ]
    return json.dumps({"streams": streams, "mode": mode}).encode()


class RssSampler:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.server.rss_mb())
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def call(
    client: httpx.Client, server: Server, payload: bytes, expect: dict[str, int]
) -> dict[str, Any]:
    cpu = server.cpu_seconds()
    with RssSampler(server) as rss:
        began = time.perf_counter()
        r = client.post(
            "/v1/streams/bulk", content=payload, headers={"content-type": "application/json"}
        )
        took = time.perf_counter() - began
    if r.status_code != 200:
        raise BenchError(f"bulk answered {r.status_code}: {r.text[:300]}")
    counts = r.json()
    if counts != expect:
        raise BenchError(f"bulk answered {counts}, expected {expect}")
    return {
        "s": round(took, 3),
        "counts": counts,
        "server_cpu_s": round(server.cpu_seconds() - cpu, 2),
        "server_peak_rss_mb": round(rss.peak, 1),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    n = args.streams
    tenth = n // 10
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["bench/bulk.py", *sys.argv[1:]]),
        "streams": n,
        "durable_postgres": not args.fast_pg,
        "runs": [],
    }
    for run in range(args.runs):
        with Stack(durable=not args.fast_pg) as stack:
            server = stack.serve()
            keys = [f"b-s{i:07d}" for i in range(n)]
            create = body(keys, "upsert")
            replaced = keys[tenth:] + [f"b-n{i:07d}" for i in range(tenth)]
            replace = body(replaced, "replace")
            update = body(replaced, "upsert", "http://radio.example/v2/{}.aac")
            result["body_mb"] = round(len(create) / 2**20, 1)
            steps: dict[str, Any] = {}
            with httpx.Client(base_url=server.url, timeout=300.0) as client:
                steps["create"] = call(
                    client, server, create, {"created": n, "updated": 0, "deleted": 0}
                )
                steps["same again"] = call(
                    client, server, create, {"created": 0, "updated": 0, "deleted": 0}
                )
                steps["replace"] = call(
                    client,
                    server,
                    replace,
                    {"created": tenth, "updated": 0, "deleted": tenth},
                )
                steps["update"] = call(
                    client, server, update, {"created": 0, "updated": n, "deleted": 0}
                )
            result["runs"].append(steps)
            for name, s in steps.items():
                print(
                    f"  run {run + 1} {name:<11} {s['s']:7.2f} s  {s['counts']}  server CPU "
                    f"{s['server_cpu_s']} s, peak RSS {s['server_peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    names = list(result["runs"][0])
    result["summary"] = {
        name: {
            "min_s": min(r[name]["s"] for r in result["runs"]),
            "median_s": round(statistics.median(r[name]["s"] for r in result["runs"]), 3),
            "max_s": max(r[name]["s"] for r in result["runs"]),
        }
        for name in names
    }
    result["goal_met"] = result["summary"]["create"]["max_s"] <= GOAL_S
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1, help="fresh servers and databases")
    parser.add_argument(
        "--fast-pg", action="store_true", help="PostgreSQL with fsync/synchronous_commit off"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    return run_bench(lambda: measure(args), report, as_json=args.json)


def report(result: dict[str, Any]) -> None:
    s = result["summary"]
    print(
        f"summary ({result['body_mb']} MB body): "
        + ", ".join(
            f"{name} {v['min_s']:.2f} / {v['median_s']:.2f} / {v['max_s']:.2f} s"
            for name, v in s.items()
        )
        + f" — goal ≤ {GOAL_S:g} s for create: {'met' if result['goal_met'] else 'MISSED'}"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
