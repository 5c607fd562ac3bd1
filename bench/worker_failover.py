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

`sigkill` (a third run): the --kill workers are `streamorch worker --exec 'sleep 1000'`
*processes* (one `sleep` per stream), the rest are in-process SDK workers; the processes
are SIGKILLed and failover is timed from the kill to the first start on an in-process
worker. It also checks that no `sleep` of a killed worker survived it.

Goals (issue 5): failover p99 ≤ TTL + 1 s; join moves ≤ optimum + 1 and time ≤ 2
heartbeat intervals; duplicate-owner time 0 s.

    .venv/bin/python bench/worker_failover.py [--streams 2000] [--workers 50] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import ROOT, Stack, machine, percentile

from streamorch.client import AdminClient
from streamorch.client.simulate import Journal, SimulatedWorker, simulate

SETTLE_TIMEOUT_S = 180.0


async def sigkill_run(url: str, workers: int, streams: int, kill: int) -> dict[str, object]:
    """Failover after SIGKILL of reference-worker processes; see the module docstring."""
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    keys = [f"{prefix}/s{i:05d}" for i in range(streams)]
    capacity = math.ceil(1.25 * streams / (workers - kill))
    journal = Journal()
    inner = [
        SimulatedWorker(f"{prefix}-w{i:03d}", journal, servers=url, capacity=capacity)
        for i in range(workers - kill)
    ]
    env = {**os.environ, "STREAMORCH_SERVER": url, "LOG_LEVEL": "WARNING"}
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started once before the measurement
            [
                *(sys.executable, "-m", "streamorch", "worker", "--name", f"{prefix}-p{i}"),
                *("--capacity", str(capacity), "--exec", "sleep 1000", "--grace", "1"),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        for i in range(kill)
    ]
    result: dict[str, object] = {"kill_mode": "sigkill", "processes": kill}
    async with AdminClient(url) as admin:
        try:
            await asyncio.gather(*(w.sdk.start() for w in inner))
            await admin.bulk([{"key": k, "url": f"http://sim.example/{k}"} for k in keys])
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            held: dict[str, set[str]] = {}
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                held = {}
                for i in range(kill):
                    name = f"{prefix}-p{i}"
                    held[name] = {s["key"] async for s in admin.iter_streams(worker=name)}
                inside = sum(len(w.sdk.running) for w in inner)
                children = sum(len(psutil.Process(p.pid).children()) for p in procs)
                if inside + children == streams and children == sum(map(len, held.values())):
                    break
            orphans = [c for p in procs for c in psutil.Process(p.pid).children()]
            killed_at = time.monotonic()
            for proc in procs:
                proc.send_signal(signal.SIGKILL)
            lost = set().union(*held.values())
            first: dict[str, float] = {}
            while time.monotonic() < deadline and len(first) < len(lost):
                for r in journal.records:
                    if r.kind == "start" and r.t >= killed_at and r.stream in lost:
                        first.setdefault(r.stream, r.t - killed_at)
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            survivors = [c.pid for c in orphans if _alive(c)]
            values = sorted(first.values())
            result.update(
                failed_over=len(values),
                lost=len(lost),
                failover_p50_s=percentile(values, 50),
                failover_p99_s=percentile(values, 99),
                failover_max_s=values[-1] if values else None,
                children_killed=len(orphans),
                children_left=len(survivors),
            )
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
            await asyncio.gather(*(w.sdk.stop() for w in inner))
            for w in await admin.list_workers():
                if w["name"].startswith(prefix):
                    await admin.remove_worker(w["worker_id"], force=True)
            for i in range(0, len(keys), 50):
                await asyncio.gather(*(admin.delete_stream(k) for k in keys[i : i + 50]))
    return result


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--kill", type=int, default=5)
    parser.add_argument("--join", type=int, default=5)
    parser.add_argument("--modes", default="crash,partition,sigkill")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results = {"machine": machine(), "runs": []}
    with Stack() as stack:
        server = stack.serve(LEASE_TTL="5", HEARTBEAT_INTERVAL="1", RECONCILE_INTERVAL="1")
        for mode in args.modes.split(","):
            if mode == "sigkill":
                run = asyncio.run(sigkill_run(server.url, args.workers, args.streams, args.kill))
                results["runs"].append(run)
                if not args.json:
                    print(f"== kill mode sigkill: {run}")
                continue
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
