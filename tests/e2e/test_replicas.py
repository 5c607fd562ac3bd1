"""Several `streamorch serve` replicas on one database, a churning simulated fleet, and a
replica killed with SIGKILL mid-run.

The replicas share nothing but PostgreSQL and Redis; their reconcilers take turns through
the advisory lock. Each simulated worker talks to one replica and fails over to the next
when it stops answering. Afterwards, I1 is checked twice: from the workers' own journal
(no stream ever ran on two workers at once) and from the events log (no stream was
granted while its previous owner still held it).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ROOT, clean_env, free_port
from tests.simulated import Fleet, all_events, ownership_violations, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

ENGINE = {"LEASE_TTL": "2", "HEARTBEAT_INTERVAL": "0.4", "RECONCILE_INTERVAL": "0.2"}
READY_TIMEOUT = 60.0
SETTLE_TIMEOUT = 30.0


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.name} ({self.url}) ---\n" + "\n".join(text[-lines:])


class Replicas:
    """`python -m streamorch serve` processes on one database; all stopped by `close()`."""

    def __init__(self, workdir: Path, database_url: str, redis_url: str) -> None:
        self.workdir = workdir
        self.env = clean_env(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            STREAMORCH_DATA_DIR=str(workdir / "data"),
            LOG_LEVEL="INFO",
            **ENGINE,
        )
        for name in ("STREAMORCH_ADMIN_TOKEN", "STREAMORCH_WORKER_TOKEN"):
            self.env.pop(name, None)
        self.replicas: list[Replica] = []

    def start(self) -> Replica:
        name = f"s{len(self.replicas) + 1}"
        port = free_port()
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamorch", "serve"],
                cwd=ROOT,
                env={**self.env, "ORCHESTRATOR_PORT": str(port)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        replica = Replica(name, proc, port, log)
        self.replicas.append(replica)
        return replica

    async def wait_ready(self, *replicas: Replica) -> None:
        async with httpx.AsyncClient(timeout=3.0) as client:
            for replica in replicas:

                async def ready(replica: Replica = replica) -> bool:
                    if not replica.running:
                        raise AssertionError(
                            f"{replica.name} exited with {replica.proc.returncode}\n"
                            + replica.tail()
                        )
                    try:
                        response = await client.get(replica.url + "/ready")
                    except httpx.TransportError:
                        return False
                    return response.status_code == 200

                await wait_until(ready, timeout=READY_TIMEOUT, interval=0.1, what=replica.name)

    def kill(self, replica: Replica) -> None:
        replica.proc.send_signal(signal.SIGKILL)
        replica.proc.wait(timeout=10)

    def close(self) -> None:
        for replica in self.replicas:
            if replica.running:
                replica.proc.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            try:
                replica.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(r.tail() for r in self.replicas)


class Admin:
    """Operator calls, sent to the first replica that is still running."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas
        self.client = httpx.AsyncClient(timeout=10.0)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        last: Exception | None = None
        for replica in self.replicas.replicas:
            if not replica.running:
                continue
            try:
                return await self.client.request(method, replica.url + path, **kwargs)
            except httpx.TransportError as exc:
                last = exc
        raise AssertionError(f"no replica answered {method} {path}: {last!r}")

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def json(self, path: str, **kwargs: Any) -> Any:
        response = await self.get(path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    async def events(self) -> list[dict[str, Any]]:
        for replica in self.replicas.replicas:
            if replica.running:
                async with httpx.AsyncClient(base_url=replica.url, timeout=10.0) as client:
                    return await all_events(client)
        raise AssertionError("no replica running")


async def converged(admin: Admin, fleet: Fleet, keys: list[str]) -> bool:
    """Every key runs on exactly one live worker, nothing moves, loads are even (I6)."""
    if not fleet.runs_exactly(keys):
        return False
    status = await admin.json("/v1/status")
    if status["streams"]["assigned"] != len(keys) or status["streams"]["moving"] != 0:
        return False
    active = (await admin.json("/v1/workers", params={"status": "active"}))["items"]
    loads = [w["load"] for w in active]
    # Workers that died silently count until their lease expired and freed their streams.
    if {w["name"] for w in active} != {w.name for w in fleet.live}:
        return False
    return max(loads) - min(loads) <= 1


async def explain_overlaps(admin: Admin, fleet: Fleet) -> None:
    """Print what the journal, the workers and the events log say about overlapping streams."""
    streams = sorted({line.split(":")[0] for line in fleet.journal.overlaps()})[:2]
    with contextlib.suppress(Exception):
        events = await admin.events()
        for stream in streams:
            print(f"=== {stream}: journal")
            print("\n".join(fleet.journal.story(stream)))
            print(f"=== {stream}: events")
            for e in events:
                if e["stream"] == stream:
                    print(e["id"], e["at"], e["kind"], e["worker"], e["reason"], e["details"])
            for name in {r.worker for r in fleet.journal.records if r.stream == stream}:
                print(f"=== {name}: trace (sent, answered, what)")
                for sent, answered, what, detail in fleet[name].trace:
                    print(f"{sent:.3f} {answered:.3f} {what} {detail}")


async def test_replicas_share_the_work_and_survive_a_sigkill(
    postgres_server, database, redis_url, tmp_path
):
    replicas = Replicas(tmp_path, postgres_server.url(database), redis_url)
    admin = Admin(replicas)
    fleet: Fleet | None = None
    try:
        s1, s2 = replicas.start(), replicas.start()
        await replicas.wait_ready(s1, s2)

        keys = [f"e2e/{i:03d}" for i in range(240)]
        response = await admin.request(
            "POST",
            "/v1/streams/bulk",
            json={"streams": [{"key": k, "url": f"http://radio.example/{k}"} for k in keys]},
        )
        assert response.status_code == 200, response.text

        # Two replicas; eight workers spread over them.
        fleet = Fleet([s1.url, s2.url], capacity=50)
        await fleet.start(8)
        await wait_until(
            lambda: converged(admin, fleet, keys), timeout=SETTLE_TIMEOUT, what="first placement"
        )

        # Churn: two workers die silently (one per replica), two join.
        await asyncio.gather(fleet["w000"].kill(), fleet["w001"].kill())
        await fleet.start(2)
        await wait_until(
            lambda: converged(admin, fleet, keys), timeout=SETTLE_TIMEOUT, what="after churn"
        )

        # A third replica; three workers join through it.
        s3 = replicas.start()
        await replicas.wait_ready(s3)
        third = fleet.add_target(s3.url)
        for _ in range(3):
            await fleet.add(f"w{len(fleet.workers):03d}", server=third)
        await wait_until(
            lambda: converged(admin, fleet, keys), timeout=SETTLE_TIMEOUT, what="third replica"
        )

        # SIGKILL the first replica mid-run, while the fleet churns again.
        on_s1 = [w for w in fleet.live if w.base_url.rstrip("/") == s1.url]
        assert on_s1, "some live worker must talk to s1"
        await fleet.add(f"w{len(fleet.workers):03d}", server=1)  # rebalancing starts
        replicas.kill(s1)
        await asyncio.gather(fleet["w002"].crash(), fleet["w003"].kill())
        await wait_until(
            lambda: converged(admin, fleet, keys), timeout=SETTLE_TIMEOUT, what="after SIGKILL"
        )

        # The workers of the killed replica re-pointed to a surviving one.
        for worker in on_s1:
            if worker.alive:
                assert worker.failovers >= 1, worker.name
                assert worker.base_url.rstrip("/") != s1.url, worker.name
        assert s2.running
        assert s3.running
        status = await admin.json("/v1/status")
        assert status["reconciler"]["last_error"] is None, status["reconciler"]

        # I1, from the workers' journal and from the events log.
        problems = fleet.journal.overlaps() + fleet.journal.token_regressions()
        for worker in fleet.workers.values():
            problems += worker.anomalies + [f"{worker.name}: {e}" for e in worker.errors]
        assert problems == [], "\n".join(problems[:20])
        events = await admin.events()
        assert ownership_violations(events) == []
        expired = {e["worker"] for e in events if e["kind"] == "worker_expired"}
        assert expired == {"w000", "w001", "w002", "w003"}
    except BaseException:
        print(replicas.logs())
        if fleet is not None:
            await explain_overlaps(admin, fleet)
        raise
    finally:
        if fleet is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(fleet.close(), 20)
        await admin.client.aclose()
        replicas.close()
