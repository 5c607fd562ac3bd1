"""Reconcile passes against the real store: expiry, the outage grace, serialisation."""

from __future__ import annotations

import anyio
import psycopg
import pytest

from streamorch.backing import endpoints
from streamorch.core import engine
from streamorch.domain.models import Policy
from streamorch.domain.records import StreamSpec
from streamorch.store.database import DatabaseManager
from streamorch.store.postgres import EngineStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(settings):
    async with DatabaseManager(endpoints.postgres_target(settings), settings) as db:
        yield EngineStore(db)


async def _fleet(store: EngineStore, workers: int, streams: int) -> None:
    for i in range(workers):
        await store.register(name=f"w{i}", capacity=10, labels={}, address=None, ttl=60)
    await store.bulk([StreamSpec(f"s{i}", "http://x") for i in range(streams)], "upsert")
    result = await engine.reconcile_pass(store, Policy(), None, lease_ttl=60)
    assert len(result.plan.grants) == streams


def _sql(postgres_server, database, statement: str) -> None:
    with psycopg.connect(postgres_server.conninfo(database), autocommit=True) as conn:
        conn.execute(statement)


async def test_lapsed_leases_expire_and_streams_are_regranted(store, postgres_server, database):
    await _fleet(store, workers=3, streams=9)
    _sql(
        postgres_server,
        database,
        "UPDATE workers SET lease_expires_at = now() - interval '1 second' WHERE name = 'w0'",
    )
    result = await engine.reconcile_pass(store, Policy(), None, lease_ttl=60)
    assert len(result.expired) == 1
    assert result.graced == 0
    assert len(result.plan.grants) == 3  # w0's streams, now on the survivors
    workers = {w["name"]: w for w in await store.list_workers(None)}
    assert workers["w0"]["status"] == "expired"
    assert workers["w0"]["streams"] == 0
    assert workers["w1"]["load"] + workers["w2"]["load"] == 9


async def test_control_plane_outage_extends_leases_instead_of_expiring(
    store, postgres_server, database
):
    await _fleet(store, workers=3, streams=9)
    # Nobody could heartbeat for an hour because no pass (no server) ran either.
    _sql(
        postgres_server,
        database,
        "UPDATE workers SET lease_expires_at = now() - interval '50 minutes'; "
        "UPDATE cluster SET last_pass_at = now() - interval '1 hour'",
    )
    result = await engine.reconcile_pass(store, Policy(), None, lease_ttl=60)
    assert result.graced == 3
    assert result.expired == []
    assert all(w["status"] == "active" for w in await store.list_workers(None))
    kinds = [e["kind"] for e in await store.events(since=0, limit=1000, stream=None)]
    assert "leases_extended" in kinds
    # The grace is given once: a worker that stays silent still expires afterwards.
    _sql(
        postgres_server,
        database,
        "UPDATE workers SET lease_expires_at = now() - interval '1 second' WHERE name = 'w2'",
    )
    again = await engine.reconcile_pass(store, Policy(), None, lease_ttl=60)
    assert again.graced == 0
    assert len(again.expired) == 1


async def test_concurrent_passes_are_serialised(store):
    await _fleet(store, workers=2, streams=4)
    ran = []

    async def one() -> None:
        ran.append((await engine.reconcile_pass(store, Policy(), None, lease_ttl=60)).ran)

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    assert any(ran)
    # Each pass is one transaction under the advisory lock: the catalog stays
    # consistent whatever interleaving happened.
    workers = await store.list_workers(None)
    assert sum(w["streams"] for w in workers) == 4
