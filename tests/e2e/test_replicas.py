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
from typing import Any

import httpx
import pytest

from tests.support.cluster import Servers
from tests.support.fleet import Fleet, all_events, ownership_violations
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

ENGINE = {"LEASE_TTL": "2", "HEARTBEAT_INTERVAL": "0.4", "RECONCILE_INTERVAL": "0.2"}
SETTLE_TIMEOUT = 30.0


class Admin:
    """Operator calls, sent to the first replica that is still running."""

    def __init__(self, replicas: Servers) -> None:
        self.replicas = replicas
        self.client = httpx.AsyncClient(timeout=10.0)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        last: Exception | None = None
        for replica in self.replicas.servers:
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
        for replica in self.replicas.servers:
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
    replicas = Servers(tmp_path, postgres_server.url(database), redis_url, ENGINE)
    admin = Admin(replicas)
    fleet: Fleet | None = None
    try:
        s1, s2 = replicas.start(), replicas.start()
        await asyncio.to_thread(replicas.wait_ready, s1, s2)

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
        await asyncio.to_thread(replicas.wait_ready, s3)
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
