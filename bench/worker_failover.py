"""Worker-side figures: failover, join and duplicate-owner time as SDK workers see them.

Starts embedded PostgreSQL + Valkey and one `streamorch serve` with LEASE_TTL 5 s and
HEARTBEAT_INTERVAL 1 s (RECONCILE_INTERVAL 1 s), then runs `streamorch.client.simulate`:
--workers real `AsyncWorker`s *in this process* (each with its own HTTP connections),
--streams streams, then --kill workers killed in-process and --join workers added.

Kill modes: `crash` — the worker's network is severed and its streams stop at once, as
after SIGKILL of a worker process (the server learns nothing until the lease ends);
`partition` — severed but still running: its streams stop when its own self-fencing
stops them. Failover per stream = kill → first start on another worker, from the
workers' own start/stop times (one monotonic clock, one process).

Goals (issue 5): failover p99 ≤ TTL + 1 s; join moves ≤ optimum + 1 and time ≤ 2
heartbeat intervals; duplicate-owner time 0 s.

    .venv/bin/python bench/worker_failover.py [--streams 2000] [--workers 50] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import Stack, machine

from streamorch.client.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--kill", type=int, default=5)
    parser.add_argument("--join", type=int, default=5)
    parser.add_argument("--modes", default="crash,partition")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results = {"machine": machine(), "runs": []}
    with Stack() as stack:
        server = stack.serve(LEASE_TTL="5", HEARTBEAT_INTERVAL="1", RECONCILE_INTERVAL="1")
        for mode in args.modes.split(","):
            report = asyncio.run(
                simulate(
                    server.url,
                    workers=args.workers,
                    streams=args.streams,
                    kill=args.kill,
                    join=args.join,
                    duration=0,
                    kill_mode=mode,
                    seed=args.seed,
                    say=lambda line: print(line, file=sys.stderr),
                )
            )
            if not args.json:
                print(f"== kill mode {mode}")
                for line in report.lines():
                    print(line)
            results["runs"].append(
                {
                    "kill_mode": mode,
                    "converge_s": report.converge_s,
                    "failover_p50_s": report.percentile(50),
                    "failover_p99_s": report.percentile(99),
                    "failover_max_s": max(report.failover_s, default=None),
                    "failed_over": len(report.failover_s),
                    "join_s": report.join_s,
                    "join_moves": report.join_moves,
                    "join_optimum": report.join_optimum,
                    "balance": report.balance,
                    "duplicate_s": report.duplicate_s,
                    "no_owner_stream_s": report.no_owner_s,
                    "unconverged": len(report.unconverged),
                }
            )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"machine: {results['machine']}")


if __name__ == "__main__":
    main()
