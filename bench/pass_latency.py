"""Heartbeat latency while large reconcile passes run in the same server process.

Starts embedded PostgreSQL + Valkey and one `streamorch serve` per mode
(bench/_servers.py), loads --streams streams and --workers workers (capacity enough for
all, leases an hour ahead) with plain SQL, and registers --probes probe workers through
the API, drained so that they are given nothing. A separate process then heartbeats
the probes on a fixed schedule (--rate per second, latency from the scheduled send
time, as bench/heartbeat.py's open loop), first with no pass to do ("idle"), then
while this process forces a full placement every --every seconds ("passes"): every
assignment is deleted and the generation bumped, so the server's next pass grants all
--streams streams again (snapshot, plan, 20,000 grants and their events at the default
size: the start-up pass of a large fleet).

Modes compare where a pass's snapshot and plan run: `thread` (RECONCILE_PLAN_IN_THREAD
true, the default) or `loop` (false: on the event loop, as before). Pass durations come
from the server's own histogram (`streamorch_reconcile_pass_duration_seconds`);
heavy passes are those over 50 ms.

`--in-process` measures the same thing without HTTP or a server process, so that other
load on the machine weighs less: this process runs the passes itself (`EngineStore`,
as the server's reconciler does) while, on the same event loop, a timer due every
10 ms records how late it fires (the loop's lag) and probe heartbeats go through the
store's batcher at --rate per second. Mode `thread-1ms` is `thread` with the
interpreter's GIL switch interval at 1 ms instead of 5 ms.

    .venv/bin/python bench/pass_latency.py [--streams 20000] [--workers 100] [--json]
    .venv/bin/python bench/pass_latency.py --in-process [--passes 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import BenchError, Stack, machine, percentile, run_bench
from heartbeat import generator_main

from streamorch.backing.endpoints import postgres_target
from streamorch.config import load_settings
from streamorch.core import engine
from streamorch.domain.models import Policy
from streamorch.store.database import DatabaseManager
from streamorch.store.postgres import EngineStore

MODES = {"thread": "true", "loop": "false"}
SERVER_ENV = {"LEASE_TTL": "30", "LOG_LEVEL": "WARNING"}
HEAVY_S = 0.05


def load(conninfo: str, streams: int, workers: int) -> None:
    capacity = -(-streams // workers) + 10
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO streams (key, url) SELECT 'p-s' || lpad(i::text, 6, '0'), "
            "'http://radio.example/' || i || '.mp3' FROM generate_series(0, %s - 1) i",
            (streams,),
        )
        conn.execute(
            "INSERT INTO workers (name, capacity, lease_expires_at) "
            "SELECT 'p-w' || lpad(i::text, 4, '0'), %s, now() + interval '1 hour' "
            "FROM generate_series(0, %s - 1) i",
            (capacity, workers),
        )
        conn.execute("UPDATE cluster SET generation = generation + 1")
        conn.execute("ANALYZE")


def setup_probes(base: str, n: int, streams: int) -> list[dict[str, Any]]:
    with httpx.Client(base_url=base, timeout=30.0) as client:
        probes = []
        for i in range(n):
            r = client.post("/v1/workers/register", json={"name": f"probe-{i:03d}"})
            r.raise_for_status()
            body = r.json()
            client.post(f"/v1/workers/{body['worker_id']}/drain").raise_for_status()
            probes.append(
                {
                    "id": body["worker_id"],
                    "incarnation": body["incarnation"],
                    "secret": body["secret"],
                    "running": [],
                }
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = client.get("/v1/status").json()["streams"]
            if counts["assigned"] == streams:
                break
            time.sleep(0.5)
        else:
            raise BenchError(f"initial placement did not finish: {counts}")
    # The generator's requests; a drained probe runs nothing and is given nothing.
    return [{**p, "running": []} for p in probes]


def scrape(base: str) -> dict[str, float]:
    """The server's pass-duration and event-loop-lag series that this bench reads."""
    text = httpx.get(base + "/metrics", timeout=10).text
    wanted = (
        "streamorch_reconcile_pass_duration_seconds_",
        "streamorch_event_loop_lag_seconds_",
    )
    return {
        line.split()[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(wanted)
    }


def passes(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Heavy passes (over HEAVY_S) and event-loop stalls between two scrapes."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    p = "streamorch_reconcile_pass_duration_seconds_"
    lag = "streamorch_event_loop_lag_seconds_"
    heavy = delta(p + "count") - delta(p + 'bucket{le="0.05"}')
    return {
        "heavy_passes": int(heavy),
        "heavy_pass_mean_s": round(delta(p + "sum") / max(1.0, heavy), 3),
        "loop_lag_samples": int(delta(lag + "count")),
        "loop_lags_over_100ms": int(delta(lag + "count") - delta(lag + 'bucket{le="0.1"}')),
        "loop_lags_over_1s": int(delta(lag + "count") - delta(lag + 'bucket{le="1.0"}')),
        "loop_lag_total_s": round(delta(lag + "sum"), 2),
    }


def force_passes(conninfo: str, every: float, stop: threading.Event, fired: list[float]) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while not stop.wait(every):
            with conn.transaction():
                conn.execute("DELETE FROM assignments")
                conn.execute("UPDATE cluster SET generation = generation + 1")
            fired.append(time.monotonic())


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    env = {**SERVER_ENV, "RECONCILE_PLAN_IN_THREAD": MODES[mode]}
    out: dict[str, Any] = {"mode": mode, "server_env": env}
    with Stack(durable=True) as stack:
        load(stack.conninfo(), args.streams, args.workers)
        server = stack.serve(**env)
        probes = setup_probes(server.url, args.probes, args.streams)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=generator_main, args=(child, server.port, probes, "raw"), daemon=True
        )
        proc.start()
        try:
            parent.send(("open", args.rate, args.idle_s, 2048))
            out["idle"] = parent.recv()
            before = scrape(server.url)
            stop, fired = threading.Event(), []
            forcer = threading.Thread(
                target=force_passes, args=(stack.conninfo(), args.every, stop, fired)
            )
            forcer.start()
            try:
                parent.send(("open", args.rate, args.seconds, 2048))
                out["passes"] = parent.recv()
            finally:
                stop.set()
                forcer.join()
            out.update(passes(before, scrape(server.url)))
            out["forced"] = len(fired)
        finally:
            parent.send(("stop",))
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
        server.stop()
    for step in ("idle", "passes"):
        r = out[step]
        r.pop("generator_cpu_s", None)
        print(
            f"  {mode:<6} {step:<6} {r['rate']:>6.0f}/s  p50 {r['p50_ms']:>7.2f}  "
            f"p99 {r['p99_ms']:>8.2f}  max {r['max_ms'] or 0:>8.1f} ms  err {r['errors']}",
            flush=True,
        )
    print(
        f"  {mode:<6} {out['heavy_passes']} passes over {HEAVY_S * 1000:.0f} ms, "
        f"mean {out['heavy_pass_mean_s']:.3f} s; event loop late by over 100 ms "
        f"{out['loop_lags_over_100ms']} times, over 1 s {out['loop_lags_over_1s']} times",
        flush=True,
    )
    return out


async def in_process_mode(args: argparse.Namespace, stack: Stack, mode: str) -> dict[str, Any]:
    settings = load_settings(
        {"DATABASE_URL": stack.database_url, "STREAMORCH_DATA_DIR": str(stack.workspace / "x")}
    )
    db = DatabaseManager(postgres_target(settings), settings)
    await db.connect_with_retry()
    store = EngineStore(db)
    offload = engine.Offloader(in_thread=mode != "loop")
    switch = sys.getswitchinterval()
    if mode == "thread-1ms":
        sys.setswitchinterval(0.001)
    probes = []
    for i in range(args.probes):
        row, _ = await store.register(
            name=f"{mode}-probe-{i:03d}", capacity=1, labels={}, address=None, ttl=3600
        )
        await store.drain(row["id"])
        probes.append(row)
    lags: list[float] = []
    beats: list[float] = []
    running = True

    async def sample() -> None:
        while running:
            due = time.perf_counter() + 0.01
            await asyncio.sleep(0.01)
            lags.append(max(0.0, time.perf_counter() - due))

    async def beat(row: dict[str, Any], scheduled: float) -> None:
        await store.heartbeat(
            row["id"],
            incarnation=row["incarnation"],
            running=[],
            draining=True,
            metrics={},
            ttl=3600,
            acked_version=0,
        )
        beats.append(time.perf_counter() - scheduled)

    async def heartbeats() -> None:
        began, n, tasks = time.perf_counter(), 0, set()
        while running:
            scheduled = began + n / args.rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            task = asyncio.create_task(beat(probes[n % len(probes)], scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.wait(tasks)

    async def conn_sql(query: str) -> None:
        async with db.connection() as conn:
            await conn.execute(query)

    policy = Policy(0.0, 100)
    durations = []
    samplers = [asyncio.create_task(sample()), asyncio.create_task(heartbeats())]
    try:
        for _ in range(args.passes):
            await conn_sql("DELETE FROM assignments")
            await conn_sql("UPDATE cluster SET last_pass_at = now()")
            t0 = time.perf_counter()
            result = await engine.reconcile_pass(
                store, policy, None, lease_ttl=3600, offload=offload
            )
            durations.append(time.perf_counter() - t0)
            if len(result.plan.grants) != args.streams:
                raise BenchError(f"a pass granted {len(result.plan.grants)}")
            await asyncio.sleep(0.2)
    finally:
        running = False
        await asyncio.gather(*samplers)
        sys.setswitchinterval(switch)
        await db.close_connection_safely()
    lag_ms = sorted(x * 1000 for x in lags)
    beat_ms = sorted(x * 1000 for x in beats)
    out = {
        "mode": mode,
        "passes": len(durations),
        "pass_mean_s": round(sum(durations) / len(durations), 3),
        "loop_lag_p99_ms": round(percentile(lag_ms, 99), 1),
        "loop_lag_max_ms": round(lag_ms[-1], 1),
        "heartbeats": len(beat_ms),
        "heartbeat_p50_ms": round(percentile(beat_ms, 50), 1),
        "heartbeat_p99_ms": round(percentile(beat_ms, 99), 1),
        "heartbeat_max_ms": round(beat_ms[-1], 1),
    }
    print(
        f"  {mode:<10} passes {out['passes']} × {out['pass_mean_s']:.3f} s; loop lag p99 "
        f"{out['loop_lag_p99_ms']} ms, max {out['loop_lag_max_ms']} ms; heartbeats p50 "
        f"{out['heartbeat_p50_ms']} p99 {out['heartbeat_p99_ms']} max "
        f"{out['heartbeat_max_ms']} ms",
        flush=True,
    )
    return out


def measure_in_process(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["bench/pass_latency.py", *sys.argv[1:]]),
        "streams": args.streams,
        "workers": args.workers,
        "in_process": True,
        "modes": [],
    }
    with Stack(durable=True, valkey=False) as stack:
        load(stack.conninfo(), args.streams, args.workers)
        for mode in args.modes:
            result["modes"].append(asyncio.run(in_process_mode(args, stack, mode)))
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["bench/pass_latency.py", *sys.argv[1:]]),
        "streams": args.streams,
        "workers": args.workers,
        "probes": args.probes,
        "rate": args.rate,
        "every_s": args.every,
        "modes": [],
    }
    for mode in args.modes:
        print(f"mode {mode}:", flush=True)
        result["modes"].append(run_mode(args, mode))
    return result


def report(result: dict[str, Any]) -> None:
    if result.get("in_process"):
        for m in result["modes"]:
            print(
                f"summary {m['mode']}: passes of {result['streams']} grants took "
                f"{m['pass_mean_s']} s; event loop late by up to {m['loop_lag_max_ms']} ms "
                f"(p99 {m['loop_lag_p99_ms']}); heartbeats p99 {m['heartbeat_p99_ms']} ms, "
                f"max {m['heartbeat_max_ms']} ms"
            )
        return
    for m in result["modes"]:
        p = m["passes"]
        print(
            f"summary {m['mode']}: heartbeat p99 {p['p99_ms']} ms, max {p['max_ms']} ms while "
            f"{m['heavy_passes']} passes of {result['streams']} grants ran (mean "
            f"{m['heavy_pass_mean_s']} s); idle p99 {m['idle']['p99_ms']} ms"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0, help="probe heartbeats per second")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between forced passes")
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--modes", nargs="+", choices=[*MODES, "thread-1ms"])
    parser.add_argument("--in-process", action="store_true", help="no HTTP, no server process")
    parser.add_argument("--passes", type=int, default=8, help="passes per mode (--in-process)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.in_process:
        args.modes = args.modes or ["loop", "thread", "thread-1ms"]
        return run_bench(lambda: measure_in_process(args), report, as_json=args.json)
    args.modes = args.modes or ["loop", "thread"]
    if "thread-1ms" in args.modes:
        parser.error("thread-1ms is only measured --in-process")
    return run_bench(lambda: measure(args), report, as_json=args.json)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
