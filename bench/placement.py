"""Time of one `plan()` call at the scale the reconciler must handle every second.

A fleet of 1,000 workers (capacities 200/250/300, regions eu/us, some with a GPU)
and 100,000 streams (weights 1–3, a fifth of them requiring a region, a few a GPU;
about 80 % of the fleet's capacity):

  converged     every stream placed and balanced: the pass finds nothing to do
  10% removed   100 workers' leases expired: their ~10,000 streams are unassigned
  10% added     100 empty workers joined the converged fleet: rebalance, up to
                max_moves (100) moves
  initial       nothing placed yet: 100,000 streams to place

Prints the median of --runs timings per scenario (the setup is not timed).
Goal (docs/benchmarks.md): converged, 10% removed and 10% added well under 1 s
on a slow 2-core machine.

    .venv/bin/python bench/placement.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time

from streamorch.domain.models import Holding, Plan, Policy, Snapshot, StreamView, WorkerView
from streamorch.domain.placement import plan

N_WORKERS = 1_000
N_STREAMS = 100_000
POLICY = Policy()


def fleet(seed: int) -> tuple[dict[str, WorkerView], dict[str, StreamView]]:
    rng = random.Random(seed)
    workers = {}
    for i in range(N_WORKERS):
        labels = {"region": "eu" if i % 2 else "us"}
        if i % 10 in (0, 5):
            labels["gpu"] = "yes"
        wid = f"w{i:04}"
        workers[wid] = WorkerView(wid, rng.choice([200, 250, 300]), labels)
    streams = {}
    for i in range(N_STREAMS):
        requires: dict[str, str] = {}
        if rng.random() < 0.2:
            requires["region"] = rng.choice(["eu", "us"])
        if rng.random() < 0.02:
            requires["gpu"] = "yes"
        key = f"s{i:06}"
        streams[key] = StreamView(key, rng.randint(1, 3), requires)
    return workers, streams


def apply(snap: Snapshot, p: Plan) -> Snapshot:
    """Write the plan and let every revoked stream stop at once (as the store would
    after the owners report)."""
    assignments = dict(snap.assignments)
    preferred = {}
    for r in p.revokes:
        del assignments[r.stream]
        if r.target is not None:
            preferred[r.stream] = r.target
    for g in p.grants:
        assignments[g.stream] = Holding(g.stream, g.worker)
    return Snapshot(snap.workers, snap.streams, assignments, preferred)


def converge(snap: Snapshot) -> Snapshot:
    for _ in range(100):
        p = plan(snap, POLICY)
        if p.empty:
            return snap
        snap = apply(snap, p)
    raise RuntimeError("placement did not converge in 100 passes")


def timed(snap: Snapshot, runs: int) -> tuple[float, Plan]:
    times = []
    result = Plan()
    for _ in range(runs):
        start = time.perf_counter()
        result = plan(snap, POLICY)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    workers, streams = fleet(args.seed)
    initial = Snapshot(workers, streams, {})
    converged = converge(initial)
    removed = {f"w{i:04}" for i in range(3, N_WORKERS, 10)}  # every tenth, none with a GPU
    survivors = {wid: w for wid, w in workers.items() if wid not in removed}
    kept = {k: h for k, h in converged.assignments.items() if h.worker not in removed}
    after_loss = Snapshot(survivors, streams, kept)

    joined = dict(workers)
    for i in range(N_WORKERS, N_WORKERS + N_WORKERS // 10):
        wid = f"w{i:04}"
        joined[wid] = WorkerView(wid, 250, {"region": "eu" if i % 2 else "us"})
    after_join = Snapshot(joined, streams, converged.assignments)

    rows = []
    for name, snap in [
        ("converged", converged),
        ("10% removed", after_loss),
        ("10% added", after_join),
        ("initial", initial),
    ]:
        seconds, p = timed(snap, args.runs)
        rows.append(
            {
                "scenario": name,
                "workers": len(snap.workers),
                "streams": len(snap.streams),
                "unassigned": len(snap.streams) - len(snap.assignments),
                "median_s": round(seconds, 4),
                "grants": len(p.grants),
                "moves": p.moves,
                "unplaced": len(p.unplaced),
            }
        )
    if args.json:
        print(json.dumps({"python": platform.python_version(), "runs": args.runs, "rows": rows}))
        return
    print(f"plan() median of {args.runs} runs, Python {platform.python_version()}")
    print(f"{'scenario':<12} {'workers':>7} {'streams':>8} {'unassigned':>10} {'median':>9}  plan")
    for r in rows:
        print(
            f"{r['scenario']:<12} {r['workers']:>7} {r['streams']:>8} {r['unassigned']:>10} "
            f"{r['median_s'] * 1000:>7.0f}ms  {r['grants']} grants, {r['moves']} moves, "
            f"{r['unplaced']} unplaced"
        )


if __name__ == "__main__":
    main()
