"""Start-up of a fleet that assembles one worker after another: moves and convergence.

Starts embedded PostgreSQL + Valkey and one `streamorch serve` (defaults, LOG_LEVEL
WARNING; `--settle` sets PLACEMENT_SETTLE_S), creates --streams streams (weight 1)
with no worker, then registers --workers simulated workers (tests/support/simworker.py: they
heartbeat, long-poll and apply answers as the SDK does, journaling every start and
stop) one after another, --spacing-ms apart, as worker processes coming up would.

Reports, from the workers' own journal: streams started and then stopped again during
start-up (placed, then moved), and the time from the last registration (and from the
first) until the fleet has converged: every stream runs on exactly one worker, nothing
is moving and loads differ by at most one stream; and whether it is still so --hold-s
later.

Goals (docs/benchmarks.md): 0 streams placed and then moved; convergence ≤ 1 s at
2,000 / 20 and ≤ 10 s at 20,000 / 100.

    .venv/bin/python bench/settle.py [--streams 2000] [--workers 20] [--settle 0.5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import BenchError, Stack, machine, run_bench
from tests.support.fleet import Fleet

CONVERGE_TIMEOUT_S = 300.0


async def assemble(args: argparse.Namespace, base: str) -> dict[str, Any]:
    keys = [f"st-{i:06d}" for i in range(args.streams)]
    async with httpx.AsyncClient(base_url=base, timeout=120.0) as client:
        r = await client.post(
            "/v1/streams/bulk",
            json={"streams": [{"key": k, "url": f"http://radio.example/{k}"} for k in keys]},
        )
        r.raise_for_status()
    capacity = -(-args.streams * 5 // (args.workers * 4))  # 25 % headroom
    async with Fleet(base, capacity=capacity) as fleet, httpx.AsyncClient(base_url=base) as api:
        # Workers come up on their own schedule, as processes would: registrations are
        # started --spacing-ms apart, whatever the server's pace.
        first = time.monotonic()
        joining = []
        registered: list[float] = []

        async def join(name: str) -> None:
            await fleet.add(name)
            registered.append(time.monotonic())

        for i in range(args.workers):
            joining.append(asyncio.create_task(join(f"st-w{i:03d}")))
            if i + 1 < args.workers:
                await asyncio.sleep(args.spacing_ms / 1000)
        await asyncio.gather(*joining)
        last = time.monotonic()
        deadline = last + CONVERGE_TIMEOUT_S
        while not await converged(fleet, api, keys):
            if time.monotonic() > deadline:
                loads = sorted(len(w.running) for w in fleet.live)
                status = (await api.get("/v1/status")).json()["streams"]
                raise BenchError(
                    f"not converged within {CONVERGE_TIMEOUT_S:g} s: loads {loads[:3]}…"
                    f"{loads[-3:]}, {len(fleet.live)} live workers, server: {status}"
                )
            await asyncio.sleep(0.1)  # checking costs this process CPU its workers need
        done = time.monotonic()
        # Still converged a while later: nothing was left to move.
        await asyncio.sleep(args.hold_s)
        stable = await converged(fleet, api, keys)
        records = fleet.journal.records
        stops = {r.stream for r in records if r.kind == "stop"}
        why = collections.Counter(r.why for r in records if r.kind == "stop")
        problems = fleet.problems()
        converged_after_last = done - last
        registered.sort()
        converged_after_first = done - first
    return {
        "capacity": capacity,
        "registration_s": round(last - first, 3),
        "largest_gap_between_registrations_s": round(
            max((b - a for a, b in itertools.pairwise(registered)), default=0), 3
        ),
        "converged_after_last_s": round(converged_after_last, 3),
        "converged_after_first_s": round(converged_after_first, 3),
        "still_converged_after_hold": stable,
        "placed_then_moved": len(stops),
        "starts": sum(1 for r in records if r.kind == "start"),
        # What stopped them: an answer without the stream (long-poll, heartbeat) is a
        # move; `fence` is a worker's own self-fencing (its renewals were late).
        "stops_by_cause": dict(why),
        "problems": problems[:10],
    }


async def converged(fleet: Fleet, api: httpx.AsyncClient, keys: list[str]) -> bool:
    """Every stream runs on exactly one worker, none is moving, and loads are balanced
    (equal capacities: within one stream, I6)."""
    if not fleet.runs_exactly(keys):
        return False
    loads = [len(w.running) for w in fleet.live]
    if max(loads) - min(loads) > 1:
        return False
    counts = (await api.get("/v1/status")).json()["streams"]
    return counts["moving"] == 0 and counts["assigned"] == len(keys)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    env = {"LOG_LEVEL": "WARNING", "PLACEMENT_SETTLE_S": str(args.settle)}
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["bench/settle.py", *sys.argv[1:]]),
        "streams": args.streams,
        "workers": args.workers,
        "spacing_ms": args.spacing_ms,
        "server_env": env,
    }
    with Stack() as stack:
        server = stack.serve(**env)
        result.update(asyncio.run(assemble(args, server.url)))
        server.stop()
    return result


def report(result: dict[str, Any]) -> None:
    print(
        f"summary: {result['streams']} streams / {result['workers']} workers registering "
        f"{result['spacing_ms']} ms apart (PLACEMENT_SETTLE_S="
        f"{result['server_env']['PLACEMENT_SETTLE_S']}): {result['placed_then_moved']} streams "
        f"placed then moved; converged {result['converged_after_last_s']} s after the last "
        f"registration ({result['converged_after_first_s']} s after the first; registrations "
        f"took {result['registration_s']} s), still converged {result['still_converged_after_hold']}; "
        f"problems: {result['problems'] or 'none'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--spacing-ms", type=float, default=50.0)
    parser.add_argument("--settle", type=float, default=0.5, help="PLACEMENT_SETTLE_S")
    parser.add_argument("--hold-s", type=float, default=3.0, help="check stability this long")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    return run_bench(lambda: measure(args), report, as_json=args.json)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
