"""Fleet figures from the workers' own journals: one OS process per SDK worker.

Starts embedded PostgreSQL + Valkey and one `streamorch serve` (LEASE_TTL 5 s,
HEARTBEAT_INTERVAL 1 s, RECONCILE_INTERVAL 1 s), creates --streams streams, then runs
--workers processes of `tests/support/fleet_worker.py` (the SDK's `AsyncWorker`, capacity
1.5 × the fair share), each journaling every start and stop with its fencing token and
`time.monotonic()` (tests/support/journal.py). Phases, each measured until the journals
show every stream on exactly one live worker, loads within one stream, and nothing
changed for --quiet seconds:

1. start-up — every process registers at the same instant (they wait on a barrier after
   importing);
2. kill — SIGKILL of one worker; its share must be re-owned;
3. join — one more process (spawned beforehand, so imports do not count);
4. leave — SIGTERM of one worker, which drains and exits.

Per phase, from the journals only: time to converge (last start or stop − phase start),
starts against the optimum (0 extra moves at start-up; the dead or leaving worker's
share; ⌊S / M⌋ for a join), gaps (a stream that had run, running nowhere) — count and
longest, duplicate owners — streams, total and longest duration, and balance max/mean.

    .venv/bin/python bench/fleet.py --streams 2000 --workers 20 [--json]
    .venv/bin/python bench/fleet.py --streams 20000 --workers 100 [--json]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import ROOT, BenchError, Stack, machine, run_bench
from tests.support import journal
from tests.support.processes import ProcessFleet

PHASE_TIMEOUT_S = 300.0


class Unsettled(Exception):
    pass


def phase(
    name: str,
    fleet: ProcessFleet,
    watch: journal.Watch,
    keys: list[str],
    since: float,
    live: list[str],
    optimum: int,
    quiet: float,
) -> dict[str, Any]:
    """Wait until the fleet settled (or PHASE_TIMEOUT_S), then the phase's figures."""
    settled = True
    try:
        until = watch.wait(keys, live, quiet=quiet, timeout=PHASE_TIMEOUT_S)
    except TimeoutError as exc:
        settled, until = False, time.monotonic()
        print(f"{name}: {exc}", file=sys.stderr)
    records = fleet.records()
    fig = journal.figures(records, since, until)
    owners = journal.owners_at(records, until)
    result: dict[str, Any] = {"phase": name, "settled": settled, **fig.summary()}
    result["optimum_starts"] = optimum
    result["balance"] = journal.balance(owners, live)
    if not settled:
        result["converge_s"] = None
        result["state_at_timeout"] = watch.describe(keys, live)[:300]
    print(f"{name}: {result}", file=sys.stderr)
    return result


def reowned(records: list[journal.Record], lost: set[str], since: float) -> dict[str, Any]:
    """For the streams a worker had when it went: first start elsewhere − `since`."""
    first: dict[str, float] = {}
    for r in records:
        if r.kind == "start" and r.t >= since and r.stream in lost:
            first.setdefault(r.stream, r.t - since)
    values = sorted(first.values())
    return {
        "lost": len(lost),
        "reowned": len(values),
        "reowned_p50_s": round(statistics.median(values), 3) if values else None,
        "reowned_max_s": round(values[-1], 3) if values else None,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    streams, workers = args.streams, args.workers
    keys = [f"fleet/{i:05d}" for i in range(streams)]
    capacity = math.ceil(1.5 * streams / workers)
    result: dict[str, Any] = {
        "machine": machine(),
        "streams": streams,
        "workers": workers,
        "capacity": capacity,
        "lease_ttl_s": args.lease_ttl,
        "phases": [],
    }
    with Stack() as stack:
        server = stack.serve(
            LEASE_TTL=str(args.lease_ttl),
            HEARTBEAT_INTERVAL=str(args.heartbeat),
            RECONCILE_INTERVAL="1",
            LOG_LEVEL="INFO",
        )
        with httpx.Client(base_url=server.url, timeout=120) as client:
            body = {"streams": [{"key": k, "url": f"http://radio.example/{k}"} for k in keys]}
            response = client.post("/v1/streams/bulk", json=body)
            if response.status_code != 200:
                raise BenchError(f"bulk create: {response.status_code} {response.text[:300]}")
        workdir = Path(tempfile.mkdtemp(prefix="fleet-journal-", dir=stack.workspace))
        fleet = ProcessFleet(workdir, [server.url], capacity=capacity, drain_timeout=60)
        watch = journal.Watch(workdir)
        names = [f"w{i:03d}" for i in range(workers)]
        live = list(names)

        def run(name: str, since: float, optimum: int) -> dict[str, Any]:
            result["phases"].append(
                phase(name, fleet, watch, keys, since, live, optimum, args.quiet)
            )
            if not result["phases"][-1]["settled"]:
                raise Unsettled
            return result["phases"][-1]

        try:
            print(f"spawning {workers} worker processes", file=sys.stderr)
            first = fleet.spawn(names)
            joiner = fleet.spawn([f"w{workers:03d}"])

            run("start-up", fleet.go(first), 0)

            victim = names[0]
            lost = set(watch.held.get(victim, ()))
            t1 = fleet.kill(victim)
            live.remove(victim)
            run("kill", t1, len(lost)).update(reowned(fleet.records(), lost, t1))

            t2 = fleet.go(joiner)
            live.append(joiner[0].name)
            run("join", t2, streams // len(live))

            leaver = names[1]
            held = len(watch.held.get(leaver, ()))
            t3 = fleet.terminate(leaver)
            live.remove(leaver)
            leave = run("leave", t3, held)
            code = fleet.wait_exit(leaver, timeout=30)
            leave["leaver_exit_code"] = code
            if code is None:
                leave["leaver_note"] = "still running 30 s after its streams moved: killed"
                fleet.kill(leaver)
        except Unsettled:
            pass
        finally:
            fleet.close()
            result["server_cpu_s"] = round(server.cpu_seconds(), 1)
            if args.keep_journals:
                keep = Path(args.keep_journals)
                keep.mkdir(parents=True, exist_ok=True)
                for path in workdir.iterdir():
                    (keep / path.name).write_bytes(path.read_bytes())
                (keep / "server.log").write_bytes(server.log_path.read_bytes())
    return result


def report(result: dict[str, Any]) -> None:
    print(
        f"{result['streams']} streams / {result['workers']} worker processes "
        f"(capacity {result['capacity']}), LEASE_TTL {result['lease_ttl_s']} s"
    )
    header = (
        f"{'phase':<9} {'converge':>9} {'starts':>7} {'optimum':>8} {'replaced':>8} "
        f"{'dup streams':>11} {'dup total':>9} {'dup max':>8} {'gaps':>6} {'gap max':>8} "
        f"{'max/mean':>8}"
    )
    print(header)  # converge = the last start or stop of the phase − its start
    for p in result["phases"]:
        conv = p["converge_s"]
        if not p["settled"]:
            print(f"{p['phase']:<9} NOT SETTLED in {PHASE_TIMEOUT_S:g} s: {p['state_at_timeout']}")
        print(
            f"{p['phase']:<9} {conv if conv is None else f'{conv:.2f} s':>9} "
            f"{p['starts']:>7} {p['optimum_starts']:>8} {p['replaced']:>8} "
            f"{p['duplicate_streams']:>11} {p['duplicate_s']:>8.3f}s "
            f"{p['longest_duplicate_s']:>7.3f}s {p['gaps']:>6} {p['longest_gap_s']:>7.3f}s "
            f"{p['balance']['max_over_mean']:>8}"
        )
        if "reowned_max_s" in p:
            print(
                f"          lost {p['lost']}, re-owned {p['reowned']}: p50 "
                f"{p['reowned_p50_s']} s, max {p['reowned_max_s']} s after the SIGKILL"
            )
        if "leaver_exit_code" in p:
            print(f"          leaver exit code: {p['leaver_exit_code']}")
    print(f"server CPU: {result['server_cpu_s']} s; machine: {result['machine']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument(
        "--quiet", type=float, default=4.0, help="seconds without a change that end a phase"
    )
    parser.add_argument("--keep-journals", help="copy the journals and server log here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    return run_bench(lambda: measure(args), report, as_json=args.json)


if __name__ == "__main__":
    assert ROOT.is_dir()
    sys.exit(main())
