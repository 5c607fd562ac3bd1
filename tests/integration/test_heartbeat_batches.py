"""Concurrent heartbeats are written in batches, each worker's answer its own."""

from __future__ import annotations

import uuid

import anyio
import anyio.lowlevel
import pytest

from streamorch.backing import endpoints
from streamorch.core import engine
from streamorch.domain.errors import NotFound, Superseded
from streamorch.domain.models import Policy
from streamorch.domain.records import StreamSpec
from streamorch.store.database import DatabaseManager
from streamorch.store.postgres import EngineStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(settings):
    async with DatabaseManager(endpoints.postgres_target(settings), settings) as db:
        yield EngineStore(db)


async def _fleet(store: EngineStore, workers: int, per_worker: int) -> list[dict]:
    rows = [
        (await store.register(name=f"w{i}", capacity=per_worker, labels={}, address=None, ttl=60))[
            0
        ]
        for i in range(workers)
    ]
    specs = [StreamSpec(f"s{i}", f"http://x/{i}") for i in range(workers * per_worker)]
    await store.bulk(specs, "upsert")
    await engine.reconcile_pass(store, Policy(), None, lease_ttl=60)
    return rows


async def _beat(store: EngineStore, row: dict, running: list[str] | None = None, **kw):
    return await store.heartbeat(
        row["id"],
        incarnation=kw.pop("incarnation", row["incarnation"]),
        running=running or [],
        draining=False,
        metrics={"n": 1},
        ttl=60,
        **kw,
    )


async def test_concurrent_heartbeats_share_statements_and_get_their_own_sets(store):
    rows = await _fleet(store, workers=40, per_worker=3)
    results: dict[str, list[str]] = {}

    async def beat(row: dict) -> None:
        result = await _beat(store, row)
        results[str(row["id"])] = [a["stream"] for a in result.assignments]

    batches_before = store.heartbeats.batches
    async with anyio.create_task_group() as tg:
        for row in rows:
            tg.start_soon(beat, row)

    assert len(results) == 40
    assert store.heartbeats.batches - batches_before < 40  # coalesced
    owners = await _owners(store)
    for worker_id, streams in results.items():
        assert len(streams) == 3
        assert all(owners[s] == worker_id for s in streams)


async def test_a_batch_answers_each_worker_by_its_own_state(store):
    good, stale, other = await _fleet(store, workers=3, per_worker=1)
    await store.register(name="w1", capacity=1, labels={}, address=None, ttl=60)  # supersedes
    missing = {**other, "id": uuid.uuid4()}

    async def expect(exc_type, row):
        with pytest.raises(exc_type):
            await _beat(store, row)

    answers = []
    owned = [k for k, w in (await _owners(store)).items() if w == str(good["id"])]

    async def ok() -> None:
        answers.append(await _beat(store, good, owned, acked_version=1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ok)
        tg.start_soon(expect, Superseded, stale)
        tg.start_soon(expect, NotFound, missing)
    assert [a["stream"] for a in answers[0].assignments] == owned
    assert answers[0].running_changed


async def test_one_workers_concurrent_heartbeats_are_written_in_order(store):
    (row,) = await _fleet(store, workers=1, per_worker=2)
    order: list[list[str]] = []

    async def beat(running: list[str]) -> None:
        await _beat(store, row, running)
        order.append(running)

    async with anyio.create_task_group() as tg:
        for running in (["s0"], ["s0", "s1"], ["s1"]):
            tg.start_soon(beat, running)
            await anyio.lowlevel.checkpoint()  # queued in this order
    # The last heartbeat submitted is the one whose report stands.
    async with store.db.connection() as conn:
        cur = await conn.execute("SELECT running FROM workers WHERE id = %s", (row["id"],))
        assert (await cur.fetchone())[0] == ["s1"]
    assert order == [["s0"], ["s0", "s1"], ["s1"]]


async def _owners(store: EngineStore) -> dict[str, str]:
    async with store.db.connection() as conn:
        cur = await conn.execute("SELECT stream_key, worker_id::text FROM assignments")
        return dict(await cur.fetchall())
