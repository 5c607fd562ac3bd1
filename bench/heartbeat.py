"""Heartbeat throughput and latency of ONE `streamorch serve` process.

Starts embedded PostgreSQL + Valkey and one server (bench/_servers.py), registers
--workers workers (capacity 2 × --streams-per-worker), bulk-creates
workers × --streams-per-worker streams, heartbeats every worker until each runs exactly
its desired set, then drives heartbeats from a separate load-generator process:

  closed loop   C connections, each sending its next heartbeat as soon as the last
                answered, --step-s seconds per C in --concurrency: the saturation rate.
  open loop     heartbeats sent on a fixed schedule of R per second, --step-s seconds per
                R in --rates; latency is measured from the scheduled send time (no
                coordinated omission), so a server that cannot keep up shows it.

Every heartbeat is a real one (`running` = the worker's desired set, so no reconcile
pass is triggered), round-robin over the workers. The load generator speaks HTTP/1.1
keep-alive over raw asyncio streams with pre-encoded requests (a few µs per request)
so that most of the 2 cores is left to the server and PostgreSQL; `--client httpx`
uses httpx.AsyncClient instead. Each step reports the CPU used by the server process,
PostgreSQL (postmaster + backends) and the load generator, in % of one core.

Diagnostics: the heartbeat statement alone, sent straight to PostgreSQL by psycopg
at the server's pool size (what PostgreSQL can do without HTTP), and its
EXPLAIN (ANALYZE, BUFFERS). `--profile` runs the server under cProfile for one
closed-loop step (throughput is then not representative) and prints where its time goes.

Goal (docs/benchmarks.md): ≥ 2,000 heartbeats/s with p99 ≤ 20 ms against one server.

    .venv/bin/python bench/heartbeat.py [--workers 500] [--step-s 8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing as mp
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import BenchError, Stack, machine, percentile, run_bench

from streamorch.domain import credentials
from streamorch.store.heartbeats import Beat, batch_params
from streamorch.store.queries import sql

GOAL_RATE = 2000.0
GOAL_P99_MS = 20.0
URL = "http://radio.example/{}.mp3"
SETUP_TIMEOUT_S = 120.0
KEEP_ALIVE_S = 4.0  # below uvicorn's timeout_keep_alive (5 s)
# Server settings for the run: a lease long enough that a pause between steps
# (diagnostics) cannot expire workers; it changes nothing in a heartbeat's cost.
SERVER_ENV = {"LEASE_TTL": "30", "LOG_LEVEL": "WARNING"}


# -- fleet set-up (bench process) ------------------------------------------------


async def setup_fleet(base: str, n_workers: int, per_worker: int) -> list[dict[str, Any]]:
    """Register the workers, create their streams, heartbeat until each runs its set."""
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits) as client:
        sem = asyncio.Semaphore(16)

        async def register(i: int) -> dict[str, Any]:
            async with sem:
                r = await client.post(
                    "/v1/workers/register",
                    json={"name": f"hb-{i:05d}", "capacity": 2 * per_worker},
                )
            r.raise_for_status()
            body = r.json()
            return {
                "id": body["worker_id"],
                "incarnation": body["incarnation"],
                "secret": body["secret"],
                "running": [],
            }

        fleet = await asyncio.gather(*(register(i) for i in range(n_workers)))
        total = n_workers * per_worker
        streams = [{"key": f"hb-s{i:06d}", "url": URL.format(i)} for i in range(total)]
        r = await client.post("/v1/streams/bulk", json={"streams": streams})
        r.raise_for_status()

        async def beat(w: dict[str, Any]) -> bool:
            async with sem:
                r = await client.post(
                    f"/v1/workers/{w['id']}/heartbeat",
                    json={"incarnation": w["incarnation"], "running": w["running"]},
                    headers={"X-Worker-Secret": w["secret"]},
                )
            r.raise_for_status()
            desired = sorted(a["stream"] for a in r.json()["assignments"])
            same = desired == w["running"]
            w["running"] = desired
            return same

        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while time.monotonic() < deadline:
            stable = all(await asyncio.gather(*(beat(w) for w in fleet)))
            counts = (await client.get("/v1/status")).json()["streams"]
            if stable and counts["assigned"] == total and counts["moving"] == 0:
                return fleet
            await asyncio.sleep(0.5)
        raise BenchError(f"fleet did not converge within {SETUP_TIMEOUT_S:g}s: {counts}")


# -- load generator (separate process) ---------------------------------------------


class RawConnection:
    """HTTP/1.1 keep-alive over asyncio streams; requests are pre-encoded bytes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.last_used = time.perf_counter()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"content-length:")
        if at < 0:
            raise BenchError(f"answer without content-length: {head[:200]!r}")
        length = int(lower[at + 15 : lower.find(b"\r\n", at)])
        body = await self.reader.readexactly(length)
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class HttpxConnection:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.last_used = time.perf_counter()

    async def request(self, data: tuple[str, bytes, str]) -> tuple[int, bytes]:
        path, body, secret = data
        r = await self.client.post(
            path,
            content=body,
            headers={"content-type": "application/json", "X-Worker-Secret": secret},
        )
        return r.status_code, r.content

    def close(self) -> None:
        pass


class Generator:
    def __init__(self, port: int, fleet: list[dict[str, Any]], client: str) -> None:
        self.port = port
        self.kind = client
        self.requests: list[Any] = []
        self.expected: list[list[str]] = []
        for w in fleet:
            path = f"/v1/workers/{w['id']}/heartbeat"
            body = json.dumps(
                {"incarnation": w["incarnation"], "running": w["running"], "status": "active"}
            ).encode()
            if client == "raw":
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    f"X-Worker-Secret: {w['secret']}\r\n\r\n"
                ).encode()
                self.requests.append(head + body)
            else:
                self.requests.append((path, body, w["secret"]))
            self.expected.append(w["running"])
        self.next = 0
        self.idle: collections.deque[Any] = collections.deque()
        self.httpx: httpx.AsyncClient | None = None

    def connection(self) -> Any:
        while self.idle:
            conn = self.idle.pop()
            # uvicorn closes a keep-alive connection idle for 5 s: do not count the
            # reset of one the server already closed as a failed heartbeat.
            if time.perf_counter() - conn.last_used < KEEP_ALIVE_S:
                return conn
            conn.close()
        if self.kind == "raw":
            return RawConnection(self.port)
        assert self.httpx is not None
        return HttpxConnection(self.httpx)

    async def one(self, stats: dict[str, Any], started: float) -> None:
        i = self.next
        self.next = (i + 1) % len(self.requests)
        conn = self.connection()
        try:
            status, body = await conn.request(self.requests[i])
        except (OSError, asyncio.IncompleteReadError, httpx.HTTPError) as exc:
            conn.close()
            stats["errors"] += 1
            stats["last_error"] = repr(exc)
            return
        stats["latencies"].append(time.perf_counter() - started)
        conn.last_used = time.perf_counter()
        self.idle.append(conn)
        if status != 200:
            stats["errors"] += 1
            stats["last_error"] = f"{status} {body[:200]!r}"
        elif stats["checked"] < 50 or i % 97 == 0:
            # Now and then, that the answer is the worker's full desired set.
            stats["checked"] += 1
            got = sorted(a["stream"] for a in json.loads(body)["assignments"])
            if got != self.expected[i]:
                stats["mismatched"] += 1

    async def closed(self, concurrency: int, seconds: float) -> dict[str, Any]:
        stats = _new_stats()
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline:
                await self.one(stats, time.perf_counter())

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return _finish(stats, time.perf_counter() - began)

    async def open(self, rate: float, seconds: float, max_in_flight: int) -> dict[str, Any]:
        stats = _new_stats()
        total = int(rate * seconds)
        tasks: set[asyncio.Task[None]] = set()
        began = time.perf_counter()
        sent = 0
        while sent < total:
            now = time.perf_counter()
            due = min(total, int((now - began) * rate) + 1)
            while sent < due:
                scheduled = began + sent / rate
                if len(tasks) >= max_in_flight:
                    stats["dropped"] += due - sent  # the server is far behind: give up
                    sent = due
                    break
                task = asyncio.create_task(self.one(stats, scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(max(0.0, began + sent / rate - time.perf_counter()))
        if tasks:
            await asyncio.wait(tasks, timeout=10.0)
        return _finish(stats, time.perf_counter() - began, rate)

    async def run(self, conn: Any) -> None:
        if self.kind == "httpx":
            limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
            self.httpx = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{self.port}", timeout=30.0, limits=limits
            )
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "stop":
                break
            cpu0 = time.process_time()
            if command[0] == "closed":
                result = await self.closed(command[1], command[2])
            else:
                result = await self.open(command[1], command[2], command[3])
            result["generator_cpu_s"] = time.process_time() - cpu0
            conn.send(result)
        for c in self.idle:
            c.close()
        if self.httpx is not None:
            await self.httpx.aclose()


def _new_stats() -> dict[str, Any]:
    return {"latencies": [], "errors": 0, "dropped": 0, "checked": 0, "mismatched": 0}


def _finish(stats: dict[str, Any], elapsed: float, rate: float | None = None) -> dict[str, Any]:
    lat = sorted(x * 1000 for x in stats.pop("latencies"))
    return {
        **stats,
        "target_rate": rate,
        "ok": len(lat),
        "elapsed_s": round(elapsed, 3),
        "rate": round(len(lat) / elapsed, 1),
        "p50_ms": round(percentile(lat, 50), 2),
        "p90_ms": round(percentile(lat, 90), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(lat[-1], 2) if lat else None,
    }


def generator_main(conn: Any, port: int, fleet: list[dict[str, Any]], client: str) -> None:
    asyncio.run(Generator(port, fleet, client).run(conn))


# -- diagnostics (bench process) -----------------------------------------------------


async def db_only(
    conninfo: str, fleet: list[dict[str, Any]], pool_size: int, seconds: float
) -> dict[str, Any]:
    """The heartbeat statement alone, `pool_size` at a time, straight to PostgreSQL."""
    query = sql("heartbeats")
    latencies: list[float] = []
    async with AsyncConnectionPool(
        conninfo, min_size=pool_size, max_size=pool_size, kwargs={"autocommit": True}
    ) as pool:
        deadline = time.perf_counter() + seconds
        counter = iter(range(10**9))

        async def loop() -> None:
            async with pool.connection() as conn:
                while time.perf_counter() < deadline:
                    w = fleet[next(counter) % len(fleet)]
                    t0 = time.perf_counter()
                    cur = await conn.execute(query, _params(w))
                    await cur.fetchone()
                    latencies.append(time.perf_counter() - t0)

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(pool_size)))
        elapsed = time.perf_counter() - began
    lat = sorted(x * 1000 for x in latencies)
    return {
        "connections": pool_size,
        "rate": round(len(lat) / elapsed, 1),
        "p50_ms": round(percentile(lat, 50), 2),
        "p99_ms": round(percentile(lat, 99), 2),
    }


def _params(w: dict[str, Any]) -> dict[str, Any]:
    secret_hash = credentials.digest(w["secret"])  # checked in the statement, as served
    beat = Beat(w["id"], w["incarnation"], w["running"], False, {}, None, 30.0, secret_hash)
    return batch_params([beat])


def explain(conninfo: str, w: dict[str, Any]) -> dict[str, Any]:
    with psycopg.connect(conninfo) as conn:  # a transaction, rolled back at the end
        rows = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + sql("heartbeats"), _params(w)
        ).fetchall()
        conn.rollback()
    lines = [r[0] for r in rows]
    planning = next((x for x in lines if x.startswith("Planning Time")), "")
    execution = next((x for x in lines if x.startswith("Execution Time")), "")
    return {"planning": planning, "execution": execution, "plan": lines}


# -- the run -------------------------------------------------------------------------


def step(stack: Stack, server: Any, pipe: Any, command: tuple) -> dict[str, Any]:
    server_cpu, pg_cpu = server.cpu_seconds(), stack.postgres_cpu_seconds()
    pipe.send(command)
    result = pipe.recv()
    wall = result["elapsed_s"]
    result["server_cpu_pct"] = round(100 * (server.cpu_seconds() - server_cpu) / wall)
    result["postgres_cpu_pct"] = round(100 * (stack.postgres_cpu_seconds() - pg_cpu) / wall)
    result["generator_cpu_pct"] = round(100 * result.pop("generator_cpu_s") / wall)
    return result


def print_step(label: str, r: dict[str, Any]) -> None:
    print(
        f"  {label:<16} {r['rate']:>8.0f}/s  p50 {r['p50_ms']:>7.2f}  p90 {r['p90_ms']:>7.2f}  "
        f"p99 {r['p99_ms']:>7.2f}  max {r['max_ms'] or 0:>7.1f} ms  err {r['errors']}"
        f"{' drop ' + str(r['dropped']) if r['dropped'] else ''}"
        f"{' (' + r['last_error'][:80] + ')' if r.get('last_error') else ''}  cpu: server "
        f"{r['server_cpu_pct']}% pg {r['postgres_cpu_pct']}% gen {r['generator_cpu_pct']}%",
        flush=True,
    )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["bench/heartbeat.py", *sys.argv[1:]]),
        "workers": args.workers,
        "streams_per_worker": args.streams_per_worker,
        "client": args.client,
        "durable_postgres": not args.fast_pg,
        "server_env": {**SERVER_ENV, **dict(args.env)},
    }
    python_args: tuple[str, ...] = ()
    if args.profile:
        python_args = ("-m", "cProfile", "-o", str(Path(args.profile).resolve()))
    with Stack(durable=not args.fast_pg) as stack:
        server = stack.serve(python_args=python_args, **SERVER_ENV, **dict(args.env))
        t0 = time.perf_counter()
        fleet = asyncio.run(setup_fleet(server.url, args.workers, args.streams_per_worker))
        result["setup_s"] = round(time.perf_counter() - t0, 1)
        print(f"fleet ready in {result['setup_s']} s", flush=True)

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=generator_main, args=(child, server.port, fleet, args.client), daemon=True
        )
        proc.start()
        try:
            if args.profile:
                r = step(stack, server, parent, ("closed", 32, args.step_s))
                print_step("profiled c=32", r)
                result["profiled"] = r
            else:
                result["closed"] = []
                print("closed loop (concurrency → rate, latency):", flush=True)
                for c in args.concurrency:
                    r = step(stack, server, parent, ("closed", c, args.step_s))
                    r["concurrency"] = c
                    result["closed"].append(r)
                    print_step(f"c={c}", r)
                result["open"] = []
                print("open loop (target rate):", flush=True)
                for rate in args.rates:
                    r = step(stack, server, parent, ("open", rate, args.step_s, 2048))
                    result["open"].append(r)
                    print_step(f"{rate:g}/s", r)
                    if r["rate"] < 0.9 * rate:
                        break  # saturated: higher rates only queue more
        finally:
            parent.send(("stop",))
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
        result["server_rss_mb"] = round(server.rss_mb(), 1)
        if not args.profile:
            print("diagnostics:", flush=True)
            pool = int(dict(args.env).get("DB_POOL_MAX_SIZE", 10))
            result["db_only"] = asyncio.run(db_only(stack.conninfo(), fleet, pool, 5.0))
            d = result["db_only"]
            print(
                f"  heartbeat SQL alone via psycopg, {pool} connections: {d['rate']:.0f}/s, "
                f"p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms",
                flush=True,
            )
            result["explain"] = explain(stack.conninfo(), fleet[0])
            print(
                f"  EXPLAIN ANALYZE: {result['explain']['planning']}, "
                f"{result['explain']['execution']}",
                flush=True,
            )
        server.stop()
    if args.profile:
        result["profile"] = profile_summary(args.profile)
    else:
        result["summary"] = summarise(result)
    return result


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    met = [r for r in result["open"] if r["rate"] >= 0.97 * r["target_rate"] and r["errors"] == 0]
    within = [r for r in met if r["p99_ms"] <= GOAL_P99_MS]
    best = max(result["closed"], key=lambda r: r["rate"])
    at_goal = next((r for r in result["open"] if r["target_rate"] == GOAL_RATE), None)
    return {
        "saturation_rate": best["rate"],
        "saturation_concurrency": best["concurrency"],
        "max_sustained_rate": max((r["target_rate"] for r in met), default=0),
        "max_rate_with_p99_in_goal": max((r["target_rate"] for r in within), default=0),
        "at_goal_rate": at_goal,
        "goal_met": bool(
            at_goal
            and at_goal["rate"] >= 0.97 * GOAL_RATE
            and at_goal["p99_ms"] <= GOAL_P99_MS
            and at_goal["errors"] == 0
        ),
    }


def profile_summary(path: str, top: int = 30) -> list[str]:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue().splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--streams-per-worker", type=int, default=4)
    parser.add_argument("--step-s", type=float, default=8.0, help="seconds per load step")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64]
    )
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[250, 500, 1000, 1500, 2000, 2500],
    )
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        type=lambda s: tuple(s.split("=", 1)),
        metavar="NAME=VALUE",
        help="extra server setting, e.g. DB_POOL_MAX_SIZE=20 (repeatable)",
    )
    parser.add_argument(
        "--fast-pg", action="store_true", help="PostgreSQL with fsync/synchronous_commit off"
    )
    parser.add_argument("--profile", metavar="FILE", help="run the server under cProfile")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    return run_bench(lambda: measure(args), report, as_json=args.json)


def report(result: dict[str, Any]) -> None:
    if "profile" in result:
        print("\n".join(result["profile"]))
        return
    s = result["summary"]
    goal = s["at_goal_rate"]
    print(
        f"summary: saturation {s['saturation_rate']:.0f}/s (closed loop, "
        f"c={s['saturation_concurrency']}); sustained open-loop rate "
        f"{s['max_sustained_rate']:g}/s; highest rate with p99 ≤ {GOAL_P99_MS:g} ms: "
        f"{s['max_rate_with_p99_in_goal']:g}/s; at {GOAL_RATE:g}/s: "
        + (
            f"{goal['rate']:.0f}/s, p99 {goal['p99_ms']} ms"
            if goal
            else "not reached (saturated earlier)"
        )
        + f" — goal {'met' if s['goal_met'] else 'MISSED'}"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
