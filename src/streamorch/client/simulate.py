"""A fleet simulator: real `AsyncWorker`s in this process against a running server.

`simulate()` creates `streams` streams under a unique key prefix through the admin API,
starts `workers` SDK workers whose callbacks only write to a `Journal` (one clock:
`time.monotonic()`), and then, phase by phase:

1. **converge** — until every stream runs on exactly one worker and nothing changed for
   a few heartbeat intervals;
2. **kill** — `kill` workers die. `crash` (the default): the process is gone, its streams
   stop at once and nothing is said to the server, as after SIGKILL. `partition`: the
   worker's network is cut but it keeps running, so its streams stop only when its
   self-fencing (I3) stops them. Failover time per stream = from the kill to its first
   start on another worker;
3. **join** — `join` new workers start; join time = until the fleet is quiet again;
   moves (streams that stopped on a live worker and started on another) are compared
   with the optimum, the new workers' fair share;
4. **hold** — steady state until `duration` seconds have passed since the start.

Everything is observed from the workers' own start/stop times: *duplicate* time is time
in which a stream ran on two workers at once (goal 0); *no-owner* time is time, after the
first convergence, in which a stream ran nowhere (failover makes some).
Streams and workers are deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from streamorch.client.admin import AdminClient
from streamorch.client.models import Assignment
from streamorch.client.worker import AsyncWorker

KILL_MODES = ("crash", "partition")


@dataclass(frozen=True)
class Record:
    t: float
    worker: str
    kind: str  # start | stop
    stream: str


class Journal:
    """Every start and stop of every simulated worker."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def add(self, worker: str, kind: str, stream: str) -> None:
        self.records.append(Record(time.monotonic(), worker, kind, stream))

    @property
    def last(self) -> float:
        return self.records[-1].t if self.records else 0.0

    def intervals(self, until: float) -> dict[str, list[tuple[float, float, str]]]:
        """stream → (start, end, worker) spans; a span still open ends at `until`."""
        open_: dict[tuple[str, str], float] = {}
        out: dict[str, list[tuple[float, float, str]]] = {}
        for r in self.records:
            if r.kind == "start":
                open_[(r.stream, r.worker)] = r.t
            elif (r.stream, r.worker) in open_:
                out.setdefault(r.stream, []).append(
                    (open_.pop((r.stream, r.worker)), r.t, r.worker)
                )
        for (stream, worker), start in open_.items():
            out.setdefault(stream, []).append((start, until, worker))
        for spans in out.values():
            spans.sort()
        return out


class Cuttable(httpx.AsyncBaseTransport):
    """The network of one simulated worker, which the simulator can cut."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.cut = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.cut:
            raise httpx.ConnectError("simulated partition", request=request)
        response = await self.inner.handle_async_request(request)
        if self.cut:  # an answer in flight when the cable was cut never arrives
            await response.aclose()
            raise httpx.ConnectError("simulated partition", request=request)
        return response

    async def sever(self) -> None:
        """Cut the cable: every request fails from now on, open connections drop."""
        self.cut = True
        await self.inner.aclose()

    async def aclose(self) -> None:
        await self.inner.aclose()


class SimulatedWorker:
    """One `AsyncWorker` whose callbacks journal starts and stops."""

    def __init__(self, name: str, journal: Journal, **options: Any) -> None:
        self.name = name
        self.journal = journal
        self.network = Cuttable()
        self.dead = False
        self.sdk = AsyncWorker(
            name=name,
            on_assign=self._assign,
            on_revoke=self._revoke,
            transport=self.network,
            **options,
        )

    def _assign(self, stream: Assignment) -> None:
        self.journal.add(self.name, "start", stream.stream)

    def _revoke(self, stream: Assignment) -> None:
        self.journal.add(self.name, "stop", stream.stream)

    async def crash(self) -> None:
        self.dead = True
        await self.network.sever()
        await self.sdk.stop()

    async def partition(self) -> None:
        self.dead = True
        await self.network.sever()


@dataclass
class Report:
    streams: int
    workers: int
    capacity: int
    kill_mode: str
    heartbeat_interval_s: float = 0.0
    lease_ttl_s: float = 0.0
    converge_s: float = math.nan
    failover_s: list[float] = field(default_factory=list)
    failover_converge_s: float = math.nan
    join_s: float = math.nan
    join_moves: int = 0
    join_optimum: int = 0
    balance: float = math.nan  # max utilisation / mean utilisation at the end
    duplicate_s: float = 0.0
    duplicates: list[str] = field(default_factory=list)
    no_owner_s: float = 0.0  # stream-seconds without an owner after the first convergence
    no_owner_max_s: float = 0.0
    unconverged: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def percentile(self, q: float) -> float:
        values = sorted(self.failover_s)
        if not values:
            return math.nan
        return values[min(len(values), max(1, math.ceil(q / 100 * len(values)))) - 1]

    def lines(self) -> list[str]:
        return [
            f"fleet: {self.workers} workers x capacity {self.capacity}, {self.streams} streams; "
            f"heartbeat {self.heartbeat_interval_s:g} s, lease {self.lease_ttl_s:g} s",
            f"initial convergence: {self.converge_s:.2f} s",
            f"failover ({self.kill_mode}, {len(self.failover_s)} streams): "
            f"p50 {self.percentile(50):.2f} s, p99 {self.percentile(99):.2f} s, "
            f"max {max(self.failover_s, default=math.nan):.2f} s; "
            f"quiet after {self.failover_converge_s:.2f} s",
            f"join: quiet after {self.join_s:.2f} s, moves {self.join_moves} "
            f"(optimum {self.join_optimum})",
            f"balance (max/mean utilisation): {self.balance:.3f}",
            f"duplicate-owner time: {self.duplicate_s:.3f} s ({len(self.duplicates)} overlaps)",
            f"no-owner time: {self.no_owner_s:.2f} stream-s in total, "
            f"{self.no_owner_max_s:.2f} s at most for one stream",
            f"not converged at the end: {len(self.unconverged)}",
            f"elapsed: {self.elapsed_s:.1f} s",
        ]

    @property
    def ok(self) -> bool:
        return self.duplicate_s == 0 and not self.unconverged


class Simulation:
    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        token: str | None = None,
        workers: int = 50,
        streams: int = 2000,
        kill: int = 5,
        join: int = 5,
        duration: float = 60.0,
        capacity: int | None = None,
        kill_mode: str = "crash",
        prefix: str | None = None,
        settle_timeout: float = 120.0,
        long_poll_wait: float = 20.0,
        say: Callable[[str], None] = print,
        seed: int | None = None,
    ) -> None:
        if kill_mode not in KILL_MODES:
            raise ValueError(f"kill mode {kill_mode!r}: use one of {', '.join(KILL_MODES)}")
        if kill >= workers:
            raise ValueError("--kill must leave at least one worker alive")
        self.servers = servers
        self.token = token
        self.n_workers, self.n_streams, self.n_kill, self.n_join = workers, streams, kill, join
        self.duration = duration
        # Enough room that the survivors of the kill can hold every stream.
        self.capacity = capacity or max(1, math.ceil(1.25 * streams / (workers - kill)))
        self.kill_mode = kill_mode
        self.prefix = prefix or f"sim-{uuid.uuid4().hex[:8]}"
        self.settle_timeout = settle_timeout
        self.long_poll_wait = long_poll_wait
        self.say = say
        self.random = random.Random(seed)  # noqa: S311 - picks victims, not secrets
        self.journal = Journal()
        self.workers: dict[str, SimulatedWorker] = {}
        self.keys = [f"{self.prefix}/s{i:05d}" for i in range(streams)]
        self.report = Report(streams, workers, self.capacity, kill_mode)
        self._joined = 0

    # -- the fleet ---------------------------------------------------------------------
    def _live(self) -> list[SimulatedWorker]:
        return [w for w in self.workers.values() if not w.dead]

    async def _start_workers(self, n: int) -> list[SimulatedWorker]:
        started = []
        for _ in range(n):
            name = f"{self.prefix}-w{self._joined:03d}"
            self._joined += 1
            worker = SimulatedWorker(
                name,
                self.journal,
                servers=self.servers,
                token=self.token,
                capacity=self.capacity,
                long_poll_wait=self.long_poll_wait,
            )
            self.workers[name] = worker
            started.append(worker)
        await asyncio.gather(*(w.sdk.start() for w in started))
        return started

    def _owners(self) -> dict[str, list[str]]:
        owners: dict[str, list[str]] = {}
        for worker in self.workers.values():
            if worker.dead and self.kill_mode == "crash":
                continue  # crashed: runs nothing (its journal says so)
            for key in worker.sdk.running:
                owners.setdefault(key, []).append(worker.name)
        return owners

    def _converged(self) -> bool:
        owners = self._owners()
        live = {w.name for w in self._live()}
        return len(owners) == len(self.keys) and all(
            len(names) == 1 and names[0] in live for names in owners.values()
        )

    async def _settle(
        self, since: float, what: str, newcomers: Sequence[SimulatedWorker] = ()
    ) -> float:
        """Wait until converged and quiet for 3 heartbeats, with every newcomer running
        something (the server may let a fleet settle before it rebalances, so quiet
        alone does not mean a join is done); seconds from `since` to the last start or
        stop."""
        quiet = 3 * max(w.sdk.heartbeat_interval for w in self._live())
        deadline = time.monotonic() + self.settle_timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            if (
                self._converged()
                and all(w.sdk.running for w in newcomers)
                and now - max(self.journal.last, since) >= quiet
            ):
                return max(self.journal.last, since) - since
            await asyncio.sleep(0.05)
        self.say(f"{what}: not converged within {self.settle_timeout:g} s")
        return math.nan

    # -- the run -----------------------------------------------------------------------
    async def run(self) -> Report:
        begin = time.monotonic()
        async with AdminClient(self.servers, token=self.token) as admin:
            try:
                await self._run(admin, begin)
            finally:
                await self._clean_up(admin)
        self.report.elapsed_s = time.monotonic() - begin
        return self.report

    async def _run(self, admin: AdminClient, begin: float) -> None:
        report = self.report
        self.say(f"starting {self.n_workers} workers and {self.n_streams} streams ({self.prefix})")
        await self._start_workers(self.n_workers)
        any_worker = next(iter(self.workers.values())).sdk
        report.heartbeat_interval_s = any_worker.heartbeat_interval
        report.lease_ttl_s = any_worker.lease_ttl
        created = time.monotonic()
        body = [{"key": k, "url": f"http://sim.example/{k}"} for k in self.keys]
        for i in range(0, len(body), 10_000):
            await admin.bulk(body[i : i + 10_000])
        report.converge_s = await self._settle(created, "initial convergence")
        steady = time.monotonic()
        self.say(f"converged in {report.converge_s:.2f} s")

        if self.n_kill:
            victims = self.random.sample(self._live(), self.n_kill)
            held = {w.name: set(w.sdk.running) for w in victims}
            killed_at = time.monotonic()
            for victim in victims:
                if self.kill_mode == "crash":
                    await victim.crash()
                else:
                    await victim.partition()
            report.failover_converge_s = await self._settle(killed_at, "failover")
            dead = set(held)
            for keys in held.values():
                for key in keys:
                    starts = [
                        r.t
                        for r in self.journal.records
                        if r.kind == "start"
                        and r.stream == key
                        and r.t >= killed_at
                        and r.worker not in dead
                    ]
                    if starts:
                        report.failover_s.append(min(starts) - killed_at)
            self.say(
                f"killed {self.n_kill} ({self.kill_mode}): {len(report.failover_s)} streams "
                f"failed over, p99 {report.percentile(99):.2f} s"
            )
            for victim in victims:  # done: a partitioned worker has fenced itself by now
                await victim.sdk.stop()

        if self.n_join:
            before = {w.name for w in self._live()}
            joined_at = time.monotonic()
            newcomers = await self._start_workers(self.n_join)
            report.join_s = await self._settle(joined_at, "join", newcomers)
            report.join_moves = sum(
                1
                for r in self.journal.records
                if r.t >= joined_at and r.kind == "stop" and r.worker in before
            )
            live = self._live()
            total_capacity = sum(w.sdk.capacity for w in live)
            report.join_optimum = sum(
                math.floor(self.n_streams * w.sdk.capacity / total_capacity) for w in newcomers
            )
            self.say(f"joined {self.n_join}: {report.join_moves} moves")

        remaining = self.duration - (time.monotonic() - begin)
        if remaining > 0:
            await asyncio.sleep(remaining)
        self._measure(steady)

    def _measure(self, steady: float) -> None:
        report = self.report
        now = time.monotonic()
        owners = self._owners()
        report.unconverged = sorted(set(self.keys) - {k for k, v in owners.items() if len(v) == 1})[
            :20
        ]
        utilisation = [len(w.sdk.running) / w.sdk.capacity for w in self._live()]
        mean = sum(utilisation) / len(utilisation) if utilisation else 0.0
        report.balance = max(utilisation) / mean if mean else math.nan
        for stream, spans in self.journal.intervals(now).items():
            for i, (_, end_a, worker_a) in enumerate(spans):
                for start_b, end_b, worker_b in spans[i + 1 :]:
                    if worker_a != worker_b and start_b < end_a:
                        together = min(end_a, end_b) - start_b
                        report.duplicate_s += together
                        report.duplicates.append(
                            f"{stream}: {worker_a} and {worker_b}, {together:.3f} s"
                        )
            covered, edge = 0.0, steady
            for start, end, _ in spans:
                start, end = max(start, edge), max(end, edge)
                covered += end - start
                edge = max(edge, end)
            gap = (now - steady) - covered
            report.no_owner_s += max(gap, 0.0)
            report.no_owner_max_s = max(report.no_owner_max_s, gap)

    async def _clean_up(self, admin: AdminClient) -> None:
        await asyncio.gather(*(w.sdk.stop() for w in self.workers.values()))
        gate = asyncio.Semaphore(16)

        async def remove(call: Awaitable[None]) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await call

        workers = {w["name"]: w["worker_id"] for w in await admin.list_workers()}
        await asyncio.gather(
            *(
                remove(admin.remove_worker(wid, force=True))
                for name, wid in workers.items()
                if name.startswith(self.prefix)
            ),
            *(remove(admin.delete_stream(k)) for k in self.keys),
        )


async def simulate(servers: str | Sequence[str], **options: Any) -> Report:
    """Run one simulation (see the module docstring) and return its report."""
    return await Simulation(servers, **options).run()
