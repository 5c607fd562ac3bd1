"""Failover time: from a dead worker's last heartbeat to its streams on survivors.

Starts embedded PostgreSQL + Valkey and one `streamorch serve` (defaults: LEASE_TTL 10 s,
RECONCILE_INTERVAL 1 s, HEARTBEAT_INTERVAL 2 s). A separate process runs --workers
lightweight simulated workers (capacity --capacity): each heartbeats every
heartbeat_interval with `running` = its desired set and long-polls its assignment
version, as the SDK does; "running" a stream costs nothing. The bench then creates
--streams streams, waits until every one is granted, nothing moves and each worker
runs its set, and for each of --rounds rounds silently kills --kill workers (their
heartbeats and long-polls stop; nothing is said to the server) and waits until the
fleet has re-converged.

Per stream of a killed worker, failover time = the first moment a survivor's answer
(long-poll or heartbeat) holds the stream − the killed worker's last heartbeat as the
server recorded it (`last_heartbeat`, PostgreSQL's clock = this machine's clock). The
`assigned` event's timestamp (transaction start of the reconcile pass that granted it)
is reported too. Checked on the side: no stream reached a survivor before the dead
worker's lease had expired (I1).

Goal (docs/benchmarks.md): p99 ≤ lease TTL + one reconcile interval (11 s by default).

    .venv/bin/python bench/failover.py [--streams 10000] [--workers 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import BenchError, Stack, machine, percentile, run_bench

URL = "http://radio.example/{}.mp3"
CONVERGE_TIMEOUT_S = 120.0


# -- the simulated fleet (separate process) ----------------------------------------


class SimWorker:
    def __init__(self, client: httpx.AsyncClient, name: str, capacity: int) -> None:
        self.client = client
        self.name = name
        self.capacity = capacity
        self.id = ""
        self.incarnation = 0
        self.version = -1
        self.desired: set[str] = set()
        self.interval = 2.0
        self.appeared: list[tuple[str, float, str]] = []  # (stream, time.time(), via)
        self.tasks: list[asyncio.Task[None]] = []
        self.errors = 0

    async def register(self) -> None:
        r = await self.client.post(
            "/v1/workers/register", json={"name": self.name, "capacity": self.capacity}
        )
        r.raise_for_status()
        body = r.json()
        self.id, self.incarnation = body["worker_id"], body["incarnation"]
        self.interval = body["heartbeat_interval_s"]

    def apply(self, body: dict[str, Any], via: str) -> None:
        if body["version"] < self.version:
            return  # an older answer overtaken by a newer one
        self.version = body["version"]
        now = time.time()
        desired = {a["stream"] for a in body["assignments"]}
        for key in desired - self.desired:
            self.appeared.append((key, now, via))
        self.desired = desired

    async def heartbeats(self) -> None:
        await asyncio.sleep(random.uniform(0, self.interval))  # spread the fleet out
        while True:
            began = time.monotonic()
            try:
                r = await self.client.post(
                    f"/v1/workers/{self.id}/heartbeat",
                    json={"incarnation": self.incarnation, "running": sorted(self.desired)},
                )
                if r.status_code == 200:
                    self.apply(r.json(), "heartbeat")
                else:
                    self.errors += 1
            except httpx.HTTPError:
                self.errors += 1
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))

    async def long_polls(self) -> None:
        while True:
            try:
                r = await self.client.get(
                    f"/v1/workers/{self.id}/assignments",
                    params={"version": max(self.version, 0), "wait": 25},
                )
                if r.status_code == 200:
                    self.apply(r.json(), "long-poll")
                else:
                    self.errors += 1
                    await asyncio.sleep(0.5)
            except httpx.HTTPError:
                self.errors += 1
                await asyncio.sleep(0.5)

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self.heartbeats()),
            asyncio.create_task(self.long_polls()),
        ]

    async def kill(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def fleet_main_async(conn: Any, base: str, n: int, capacity: int) -> None:
    # One client per worker, as if each were its own process: with one shared client,
    # cancelling the killed workers' requests starved the others of connections for
    # seconds (an httpx pool artefact that showed up as late long-polls).
    clients = [httpx.AsyncClient(base_url=base, timeout=40.0) for _ in range(n)]
    try:
        workers = [SimWorker(c, f"fo-{i:04d}", capacity) for i, c in enumerate(clients)]
        sem = asyncio.Semaphore(16)

        async def register(w: SimWorker) -> None:
            async with sem:
                await w.register()
            w.start()

        await asyncio.gather(*(register(w) for w in workers))
        by_name = {w.name: w for w in workers}
        loop = asyncio.get_running_loop()
        conn.send({w.name: w.id for w in workers})
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "stop":
                break
            if command[0] == "state":  # each live worker's desired set
                conn.send({w.name: sorted(w.desired) for w in workers if w.tasks})
            elif command[0] == "kill":
                killed = {}
                for name in command[1]:
                    w = by_name[name]
                    await w.kill()
                    killed[name] = sorted(w.desired)
                    w.tasks = []
                conn.send({"at": time.time(), "held": killed})
            elif command[0] == "appeared":  # first appearances since a time, on live workers
                since = command[1]
                conn.send(
                    {w.name: [a for a in w.appeared if a[1] >= since] for w in workers if w.tasks}
                )
            elif command[0] == "errors":
                conn.send(sum(w.errors for w in workers))
        for w in workers:
            await w.kill()
    finally:
        for c in clients:
            await c.aclose()


def fleet_main(conn: Any, base: str, n: int, capacity: int) -> None:
    asyncio.run(fleet_main_async(conn, base, n, capacity))


# -- the bench process -----------------------------------------------------------


def receive(pipe: Any, timeout: float, failure: str) -> Any:
    if not pipe.poll(timeout):
        raise BenchError(failure)
    return pipe.recv()


def ask(pipe: Any, *command: Any) -> Any:
    pipe.send(command)
    return receive(pipe, 60, f"the fleet process did not answer {command[0]!r}")


def wait_converged(client: httpx.Client, pipe: Any, total: int, live: int) -> float:
    """Until every stream is granted, nothing moves and the workers run the server's sets."""
    began = time.monotonic()
    while time.monotonic() - began < CONVERGE_TIMEOUT_S:
        counts = client.get("/v1/status").json()["streams"]
        if counts["assigned"] == total and counts["moving"] == 0:
            state = ask(pipe, "state")
            running = sum(len(v) for v in state.values())
            if running == total and len(state) == live:
                return time.monotonic() - began
        time.sleep(0.25)
    raise BenchError(f"not converged within {CONVERGE_TIMEOUT_S:g}s: {counts}")


def all_events(client: httpx.Client, since: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        body = client.get("/v1/events", params={"since": since, "limit": 1000}).json()
        events += body["items"]
        if len(body["items"]) < 1000:
            return events
        since = body["next_since"]


def pass_log(server: Any) -> list[tuple[float, int, int, float]]:
    """(end time, granted, workers expired, duration ms) of the passes the server logged."""
    found = []
    for line in server.log(10**6).splitlines():
        if "reconcile pass:" not in line:
            continue
        words = line.split()
        end = epoch(words[0].replace("Z", "+00:00"))
        granted = int(line.split("reconcile pass: ")[1].split(" granted")[0])
        expired = int(line.split(" moves finished, ")[1].split(" workers")[0])
        duration = float(line.split("duration_ms=")[1].split()[0])
        found.append((end, granted, expired, duration))
    return found


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    env = {
        "LEASE_TTL": str(args.lease_ttl),
        "RECONCILE_INTERVAL": str(args.reconcile_interval),
        "HEARTBEAT_INTERVAL": str(args.heartbeat_interval),
    }
    goal_s = args.lease_ttl + args.reconcile_interval
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["bench/failover.py", *sys.argv[1:]]),
        "streams": args.streams,
        "workers": args.workers,
        "capacity": args.capacity,
        "settings": env,
        "goal_s": goal_s,
        "rounds": [],
    }
    rng = random.Random(args.seed)
    with Stack() as stack:
        server = stack.serve(**env)
        ctx = mp.get_context("spawn")
        pipe, child = ctx.Pipe()
        proc = ctx.Process(
            target=fleet_main, args=(child, server.url, args.workers, args.capacity), daemon=True
        )
        proc.start()
        try:
            with httpx.Client(base_url=server.url, timeout=120.0) as client:
                ids = receive(pipe, 120, "the fleet did not register within 120 s")
                streams = [
                    {"key": f"fo-s{i:06d}", "url": URL.format(i)} for i in range(args.streams)
                ]
                client.post("/v1/streams/bulk", json={"streams": streams}).raise_for_status()
                took = wait_converged(client, pipe, args.streams, args.workers)
                result["initial_convergence_s"] = round(took, 1)
                print(f"{args.streams} streams on {args.workers} workers in {took:.1f} s")
                alive = sorted(ids)
                for n in range(args.rounds):
                    time.sleep(rng.uniform(0, args.heartbeat_interval))  # any phase
                    since_event = all_events(client, 0)[-1]["id"]
                    victims = rng.sample(alive, args.kill)
                    alive = [w for w in alive if w not in victims]
                    killed = ask(pipe, "kill", victims)
                    took = wait_converged(client, pipe, args.streams, len(alive))
                    r = analyse(client, pipe, killed, since_event, args.lease_ttl, pass_log(server))
                    r["reconverged_after_kill_s"] = round(took, 1)
                    result["rounds"].append(r)
                    print(
                        f"round {n + 1}: killed {args.kill} workers holding {r['streams']} "
                        f"streams; failover p50 {r['p50_s']} s, p99 {r['p99_s']} s, "
                        f"max {r['max_s']} s (assigned events: p50 {r['event_p50_s']} s, "
                        f"p99 {r['event_p99_s']} s); {r['via_long_poll']} seen first by long-poll; "
                        f"after the granting pass committed: p50 {r['after_commit_p50_s']} s, "
                        f"p99 {r['after_commit_p99_s']} s; granting passes "
                        f"{r['granting_passes']}; "
                        f"expired {r['expired_after_lease_s']} s after the lease; "
                        f"early grants {r['early']}",
                        flush=True,
                    )
                result["fleet_errors"] = ask(pipe, "errors")
        except BenchError as exc:
            raise BenchError(f"{exc}\nserver log:\n{server.log(15)}") from exc
        finally:
            with contextlib.suppress(Exception):
                pipe.send(("stop",))
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
        result["server_log_tail"] = server.log(5)
    every = sorted(x for r in result["rounds"] for x in r["samples"])
    granted = sorted(x for r in result["rounds"] for x in r["event_samples"])
    for r in result["rounds"]:
        del r["samples"], r["event_samples"]
    result["overall"] = {
        "streams": len(every),
        "p50_s": round(percentile(every, 50), 2),
        "p99_s": round(percentile(every, 99), 2),
        "max_s": round(every[-1], 2) if every else None,
        "goal_met": bool(every) and percentile(every, 99) <= goal_s,
        # The goal's own measure: last heartbeat → granted elsewhere (the `assigned` event).
        "granted_p50_s": round(percentile(granted, 50), 2),
        "granted_p99_s": round(percentile(granted, 99), 2),
        "granted_goal_met": bool(granted) and percentile(granted, 99) <= goal_s,
    }
    return result


def analyse(
    client: httpx.Client,
    pipe: Any,
    killed: dict[str, Any],
    since_event: int,
    ttl: float,
    passes: list[tuple[float, int, int, float]],
) -> dict[str, Any]:
    workers = {w["name"]: w for w in client.get("/v1/workers").json()["items"]}
    last_beat = {name: epoch(workers[name]["last_heartbeat"]) for name in killed["held"]}
    owner_of = {k: name for name, keys in killed["held"].items() for k in keys}
    seen: dict[str, float] = {}
    via: dict[str, str] = {}
    for appearances in ask(pipe, "appeared", killed["at"]).values():
        for key, t, how in appearances:
            if key in owner_of and (key not in seen or t < seen[key]):
                seen[key], via[key] = t, how
    assigned: dict[str, float] = {}
    expired_late: list[float] = []  # pass that expired the worker − its lease end
    for e in all_events(client, since_event):
        if (
            e["kind"] in ("assigned", "moved")
            and e["stream"] in owner_of
            and e["stream"] not in assigned
        ):
            assigned[e["stream"]] = epoch(e["at"])
        elif e["kind"] == "worker_expired" and e["worker"] in last_beat:
            expired_late.append(epoch(e["at"]) - last_beat[e["worker"]] - ttl)
    missing = sorted(set(owner_of) - set(seen))
    if missing:
        raise BenchError(f"{len(missing)} streams never reached a survivor, e.g. {missing[:3]}")
    samples = sorted(seen[k] - last_beat[owner_of[k]] for k in owner_of)
    by_event = sorted(assigned[k] - last_beat[owner_of[k]] for k in assigned)
    # The pass that granted each stream (its start is the event's time), and how long
    # after that pass's commit a survivor had the stream.
    ran = [(end - ms / 1000, end, ms, g) for end, g, _, ms in passes if end > killed["at"]]
    after_commit, used = [], {}
    for k, at in assigned.items():
        _start, end, ms, g = min(ran, key=lambda p: abs(p[0] - at))
        after_commit.append(seen[k] - end)
        used[end] = {"granted": g, "duration_ms": ms}
    after_commit.sort()
    return {
        "killed": sorted(killed["held"]),
        "streams": len(owner_of),
        "p50_s": round(percentile(samples, 50), 2),
        "p99_s": round(percentile(samples, 99), 2),
        "min_s": round(samples[0], 2),
        "max_s": round(samples[-1], 2),
        "event_p50_s": round(percentile(by_event, 50), 2),
        "event_p99_s": round(percentile(by_event, 99), 2),
        "expired_after_lease_s": [round(x, 2) for x in sorted(expired_late)],
        "via_long_poll": sum(1 for k in via if via[k] == "long-poll"),
        "granting_passes": [used[e] for e in sorted(used)],
        "after_commit_p50_s": round(percentile(after_commit, 50), 2),
        "after_commit_p99_s": round(percentile(after_commit, 99), 2),
        "early": sum(1 for x in samples if x < ttl),  # before the lease expired: I1 broken
        "samples": samples,
        "event_samples": by_event,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--capacity", type=int, default=60)
    parser.add_argument("--kill", type=int, default=5, help="workers killed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lease-ttl", type=float, default=10.0)
    parser.add_argument("--reconcile-interval", type=float, default=1.0)
    parser.add_argument("--heartbeat-interval", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if (args.workers - args.kill * args.rounds) * args.capacity < args.streams:
        parser.error("the survivors could not hold every stream: raise --capacity")
    return run_bench(lambda: measure(args), report, as_json=args.json)


def report(result: dict[str, Any]) -> None:
    o = result["overall"]
    goal = f"goal p99 ≤ {result['goal_s']:g} s"
    print(
        f"summary: {o['streams']} streams failed over; granted elsewhere p50 "
        f"{o['granted_p50_s']} s, p99 {o['granted_p99_s']} s ({goal}: "
        f"{'met' if o['granted_goal_met'] else 'MISSED'}); in a survivor's answer p50 "
        f"{o['p50_s']} s, p99 {o['p99_s']} s, max {o['max_s']} s ({goal}: "
        f"{'met' if o['goal_met'] else 'MISSED'})"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
