"""Only the worker's silence expires its lease (I9): never a heartbeat that waited in a
slow server, nor a lease that ended within the server's own recent lag."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streamorch.backing import endpoints
from streamorch.core import engine
from streamorch.domain.models import Policy
from streamorch.store.database import DatabaseManager
from streamorch.store.postgres import EngineStore
from tests.support.fleet import Fleet, all_events
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(settings):
    async with DatabaseManager(endpoints.postgres_target(settings), settings) as db:
        yield EngineStore(db)


async def _lapse(store: EngineStore, name: str, seconds: float) -> None:
    async with store.db.connection() as conn:
        await conn.execute(
            "UPDATE workers SET lease_expires_at = now() - make_interval(secs => %s) "
            "WHERE name = %s",
            (seconds, name),
        )


async def _status(store: EngineStore, name: str) -> str:
    return {w["name"]: w["status"] for w in await store.list_workers(None)}[name]


async def test_a_lease_expires_only_once_it_ended_longer_ago_than_the_servers_lag(store):
    await store.register(name="w", capacity=1, labels={}, address=None, ttl=60)
    await _lapse(store, "w", 0.5)
    result = await engine.reconcile_pass(store, Policy(), None, lease_ttl=60, expiry_grace_s=2.0)
    assert result.expired == []
    assert result.next_expiry_s is not None
    assert result.next_expiry_s > 0
    assert await _status(store, "w") == "active"
    result = await engine.reconcile_pass(store, Policy(), None, lease_ttl=60, expiry_grace_s=0.1)
    assert len(result.expired) == 1


async def test_a_late_heartbeat_renews_a_lease_that_no_pass_expired(store):
    row, _ = await store.register(name="w", capacity=1, labels={}, address=None, ttl=60)
    await _lapse(store, "w", 1.0)
    # Nothing moved off the worker yet: its heartbeat still counts (it may only be late
    # because the server was slow to read it).
    result = await store.heartbeat(
        row["id"], incarnation=row["incarnation"], running=[], draining=False, metrics={}, ttl=60
    )
    assert result.status == "active"
    assert (await engine.reconcile_pass(store, Policy(), None, lease_ttl=60)).expired == []


async def test_heartbeats_waiting_in_a_slow_server_keep_their_workers_alive(api):
    orch = api.app.state.runtime.orchestrator
    batcher = orch.store.heartbeats
    gate = asyncio.Event()
    execute = batcher._execute

    async def slow_execute(beats: list[Any]) -> Any:
        await gate.wait()  # PostgreSQL (or this process) too slow to write heartbeats
        return await execute(beats)

    async with Fleet(api, capacity=4) as fleet:
        await fleet.start(3)
        for key in ("a", "b", "c", "d"):
            assert (
                await api.put(f"/v1/streams/{key}", json={"url": "http://x"})
            ).status_code == 201
        await wait_until(lambda: fleet.runs_exactly("abcd"), timeout=20, what="streams placed")
        batcher._execute = slow_execute
        try:
            # Every lease runs out while each worker's heartbeat waits in the server, and
            # passes keep running meanwhile.
            async def lapsed() -> bool:
                async with orch.store.db.connection() as conn:
                    cur = await conn.execute(
                        "SELECT bool_and(lease_expires_at < now() - interval '0.5 second') "
                        "FROM workers"
                    )
                    return bool((await cur.fetchone())[0])

            await wait_until(lapsed, timeout=20, what="every lease ended")
            passes = orch.reconciler.stats.passes
            await wait_until(
                lambda: orch.reconciler.stats.passes >= passes + 3, timeout=20, what="3 passes"
            )
            assert len(batcher.pending_workers()) == 3
        finally:
            batcher._execute = execute
            gate.set()
        await wait_until(lambda: fleet.runs_exactly("abcd"), timeout=20, what="streams run again")
        assert [e for e in await all_events(api) if e["kind"] == "worker_expired"] == []
        statuses = {w["name"]: w["status"] for w in (await api.get("/v1/workers")).json()["items"]}
        assert set(statuses.values()) == {"active"}
