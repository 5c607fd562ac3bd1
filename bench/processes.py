"""Heartbeats against ONE `serve` with SERVER_PROCESSES = 1, 2, 4, and failover when one of
its server processes is killed.

For each process count: embedded PostgreSQL + Valkey and one server (bench/_servers.py),
the fleet of bench/heartbeat.py (--workers workers, 4 streams each, every worker running
its desired set), then from a separate load-generator process a closed loop at
--concurrency (the saturation rate) and open loops at --rates (p99 from the scheduled send
time). Server CPU includes every server process.

Failover (SERVER_PROCESSES=2): --clients keep-alive connections send heartbeats back to back;
one server process is killed with SIGKILL. Reported: the heartbeats that failed, the
time from the kill to the last failure (after it every heartbeat succeeded), and the time
until the replacement process answers.

    .venv/bin/python bench/processes.py [--processes 1,2,4] [--step-s 6] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import BenchError, Stack, machine, run_bench
from heartbeat import (
    SERVER_ENV,
    Generator,
    RawConnection,
    generator_main,
    print_step,
    setup_fleet,
    step,
)

FAILOVER_TIMEOUT_S = 60.0
# heartbeat.py's settings, with a lease long enough that a slow set-up on a loaded machine
# expires nobody; a lease's length changes nothing in a heartbeat's cost.
ENV = {**SERVER_ENV, "LEASE_TTL": "120"}


def children(pid: int) -> set[int]:
    return {
        p.pid for p in psutil.Process(pid).children() if "server.processes" in " ".join(p.cmdline())
    }


def throughput(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    result: dict[str, Any] = {"processes": processes}
    with Stack() as stack:
        server = stack.serve(SERVER_PROCESSES=str(processes), **ENV)
        fleet = asyncio.run(setup_fleet(server.url, args.workers, 4))
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=generator_main, args=(child, server.port, fleet, "raw"), daemon=True
        )
        proc.start()
        try:
            print(f"SERVER_PROCESSES={processes}:", flush=True)
            r = step(stack, server, parent, ("closed", args.concurrency, args.step_s))
            print_step(f"c={args.concurrency}", r)
            result["closed"] = r
            result["open"] = []
            for rate in args.rates:
                r = step(stack, server, parent, ("open", rate, args.step_s, 2048))
                print_step(f"{rate:g}/s", r)
                result["open"].append(r)
                if r["rate"] < 0.9 * rate:
                    break
        finally:
            parent.send(("stop",))
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
        server.stop()
    return result


async def _failover_load(
    port: int, fleet: list[dict[str, Any]], clients: int, kill: Any, replaced: Any
) -> dict[str, Any]:
    requests = Generator(port, fleet, "raw").requests
    outcomes: list[tuple[float, bool]] = []
    stop = asyncio.Event()
    counter = iter(range(10**9))

    async def client() -> None:
        conn = RawConnection(port)
        while not stop.is_set():
            data = requests[next(counter) % len(requests)]
            try:
                status, _ = await conn.request(data)
                ok = status == 200
            except (OSError, asyncio.IncompleteReadError):
                conn.close()
                conn = RawConnection(port)
                ok = False
            outcomes.append((time.perf_counter(), ok))
        conn.close()

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(3.0)  # steady state first
    killed_at = time.perf_counter()
    victim = await asyncio.to_thread(kill)
    replaced_after = await asyncio.to_thread(replaced, victim, killed_at)
    await asyncio.sleep(3.0)  # and after the replacement
    stop.set()
    await asyncio.gather(*tasks)
    failures = [t for t, ok in outcomes if not ok and t >= killed_at]
    before = [t for t, _ in outcomes if killed_at - 3.0 <= t < killed_at]
    return {
        "clients": clients,
        "rate_before": round(len(before) / 3.0, 1),
        "failed": len(failures),
        "failed_before_kill": sum(1 for t, ok in outcomes if not ok and t < killed_at),
        "errors_end_after_ms": round((max(failures) - killed_at) * 1000, 1) if failures else 0.0,
        "replacement_serving_after_s": round(replaced_after, 2),
        "total": len(outcomes),
    }


def failover(args: argparse.Namespace) -> dict[str, Any]:
    with Stack() as stack:
        server = stack.serve(SERVER_PROCESSES="2", **ENV)
        fleet = asyncio.run(setup_fleet(server.url, args.failover_workers, 4))
        before = children(server.pid)
        if len(before) != 2:
            raise BenchError(f"expected 2 server processes, found {before}")

        def kill() -> int:
            victim = min(before)
            psutil.Process(victim).kill()
            return victim

        def replaced(victim: int, killed_at: float) -> float:
            deadline = time.monotonic() + FAILOVER_TIMEOUT_S
            with httpx.Client(timeout=2.0) as client:
                while time.monotonic() < deadline:
                    new = children(server.pid) - before
                    if new:
                        with contextlib.suppress(httpx.TransportError):
                            # Fresh connections until the newcomer answers one.
                            r = client.get(server.url + "/health", headers={"Connection": "close"})
                            if r.json()["details"]["pid"] in new:
                                return time.perf_counter() - killed_at
                    time.sleep(0.02)
            raise BenchError(f"no replacement for {victim} within {FAILOVER_TIMEOUT_S:g}s")

        result = asyncio.run(_failover_load(server.port, fleet, args.clients, kill, replaced))
        server.stop()
    print(
        f"failover: {result['failed']} of {result['total']} heartbeats failed, the last "
        f"{result['errors_end_after_ms']} ms after the kill; replacement serving after "
        f"{result['replacement_serving_after_s']} s",
        flush=True,
    )
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["bench/processes.py", *sys.argv[1:]]),
        "workers": args.workers,
        "runs": [throughput(args, n) for n in args.processes],
    }
    if not args.no_failover:
        result["failover"] = failover(args)
    return result


def report(result: dict[str, Any]) -> None:
    for run in result["runs"]:
        ok = [r for r in run["open"] if r["rate"] >= 0.97 * r["target_rate"] and r["errors"] == 0]
        best = max(ok, key=lambda r: r["target_rate"], default=None)
        print(
            f"SERVER_PROCESSES={run['processes']}: saturation {run['closed']['rate']:.0f}/s "
            f"(p99 {run['closed']['p99_ms']} ms); highest open-loop rate sustained: "
            + (f"{best['target_rate']:g}/s with p99 {best['p99_ms']} ms" if best else "none")
        )
    if "failover" in result:
        f = result["failover"]
        print(
            f"failover (2 processes, one SIGKILLed): {f['failed']} heartbeats failed, "
            f"errors ended {f['errors_end_after_ms']} ms after the kill; replacement serving "
            f"after {f['replacement_serving_after_s']} s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--processes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4]
    )
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--step-s", type=float, default=6.0, help="seconds per load step")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop connections")
    parser.add_argument(
        "--rates", type=lambda s: [float(x) for x in s.split(",")], default=[500, 1000, 1500, 2000]
    )
    parser.add_argument("--clients", type=int, default=8, help="connections during failover")
    parser.add_argument("--failover-workers", type=int, default=100)
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    return run_bench(lambda: measure(args), report, as_json=args.json)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
