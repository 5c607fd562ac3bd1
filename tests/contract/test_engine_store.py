"""The contract of core/ports.py: the store's operations and a reconcile pass's steps,
as the Orchestrator and the Reconciler rely on them (memory and PostgreSQL alike)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from streamorch.core import engine
from streamorch.domain.errors import Conflict, LeaseExpired, NotFound, Superseded
from streamorch.domain.models import Policy
from streamorch.domain.records import StreamSpec

pytestmark = pytest.mark.anyio

INLINE = engine.Offloader(in_thread=False)


async def run_pass(store: Any, seen: int | None = None, **kw: Any) -> Any:
    kw.setdefault("lease_ttl", 60)
    return await engine.reconcile_pass(store, Policy(), seen, offload=INLINE, **kw)


async def register(store: Any, name: str, capacity: int = 10) -> uuid.UUID:
    row, _ = await store.register(name=name, capacity=capacity, labels={}, address=None, ttl=60)
    return row["id"]


async def beat(store: Any, worker: uuid.UUID, running: list[str], **kw: Any) -> Any:
    kw.setdefault("incarnation", 1)
    return await store.heartbeat(worker, running=running, draining=False, metrics={}, ttl=60, **kw)


async def kinds(store: Any) -> list[str]:
    return [e["kind"] for e in await store.events(limit=1000, stream=None)]


async def owners(store: Any) -> dict[str, str]:
    rows = await store.list_streams(after="", limit=1000, state=None, worker=None)
    return {r["key"]: r["worker_name"] for r in rows}


async def test_a_pass_grants_every_stream_and_records_it(store):
    a, b = await register(store, "a"), await register(store, "b")
    counts, _ = await store.bulk([StreamSpec(f"s{i}", "http://x") for i in range(4)], "upsert")
    assert counts == {"created": 4, "updated": 0, "deleted": 0}
    result = await run_pass(store)
    assert result.ran
    assert result.planned
    assert len(result.plan.grants) == 4
    assert result.touched == {str(a), str(b)}
    assert set((await owners(store)).values()) == {"a", "b"}
    assert (await kinds(store)).count("assigned") == 4
    answer = await beat(store, a, [])
    assert len(answer.assignments) == 2
    assert {x["stream"] for x in answer.assignments} <= {f"s{i}" for i in range(4)}


async def test_a_pass_with_nothing_new_does_not_plan(store):
    await register(store, "a")
    await store.upsert_stream(StreamSpec("s", "http://x"))
    first = await run_pass(store)
    again = await run_pass(store, first.generation)
    assert again.ran
    assert not again.planned
    await store.upsert_stream(StreamSpec("t", "http://x"))  # a change bumps the generation
    third = await run_pass(store, first.generation)
    assert third.generation > first.generation
    assert third.planned


async def test_a_pass_is_skipped_while_another_holds_the_lock(store):
    async with store.pass_tx(INLINE) as tx:
        assert await tx.try_lock()
        other = await run_pass(store)
    assert not other.ran
    assert (await run_pass(store)).ran


async def test_a_lease_expires_only_past_the_grace(harness, store):
    a, b = await register(store, "a"), await register(store, "b")
    await store.bulk([StreamSpec(f"s{i}", "http://x") for i in range(4)], "upsert")
    await run_pass(store)
    await harness.last_pass(0)
    await harness.lease_ended(a, 5)
    assert (await run_pass(store, expiry_grace_s=10)).expired == []
    result = await run_pass(store, expiry_grace_s=1)
    assert result.expired == [str(a)]
    assert set((await owners(store)).values()) == {"b"}
    assert {"worker_expired", "revoked"} <= set(await kinds(store))
    with pytest.raises(LeaseExpired):
        await beat(store, a, [])
    assert str(b) in result.touched


async def test_half_a_lease_without_a_pass_extends_every_lease(harness, store):
    a = await register(store, "a")
    await run_pass(store)
    await harness.lease_ended(a, 5)
    await harness.last_pass(40)  # more than half of the 60 s lease
    result = await run_pass(store)
    assert result.graced == 1
    assert result.expired == []
    assert "leases_extended" in await kinds(store)
    assert result.next_expiry_s is not None
    assert result.next_expiry_s > 50


async def test_a_move_finishes_only_once_the_owner_acknowledged_the_revoke(store):
    a = await register(store, "a")
    await store.bulk([StreamSpec("s0", "http://x"), StreamSpec("s1", "http://x")], "upsert")
    await run_pass(store)
    b = await register(store, "b")
    await store.drain(a)
    result = await run_pass(store)
    assert {r.stream for r in result.plan.revokes} == {"s0", "s1"}
    assert all(r.target == str(b) for r in result.plan.revokes)
    # A stop report naming no applied version proves nothing.
    await beat(store, a, [])
    assert (await run_pass(store)).finished == 0
    version = await store.version(a)
    await beat(store, a, [], acked_version=version)
    result = await run_pass(store)
    assert result.finished == 2
    assert {g.stream for g in result.plan.grants} == {"s0", "s1"}
    assert set((await owners(store)).values()) == {"b"}
    assert {"stopped", "moved", "drained"} <= set(await kinds(store))


async def test_a_drain_bumps_the_generation_and_a_drained_worker_can_leave(store):
    a = await register(store, "a")
    await store.upsert_stream(StreamSpec("s", "http://x"))
    first = await run_pass(store)
    with pytest.raises(Conflict):
        await store.deregister(a, force=False)
    await store.drain(a)
    assert (await run_pass(store, first.generation)).generation > first.generation
    touched = await store.deregister(a, force=True)
    assert touched == {str(a)}
    assert (await store.get_worker(worker_id=a))["status"] == "left"
    assert "worker_left" in await kinds(store)


async def test_registering_again_within_the_lease_keeps_the_streams(store):
    a = await register(store, "a")
    await store.upsert_stream(StreamSpec("s", "http://x"))
    await run_pass(store)
    row, _ = await store.register(name="a", capacity=10, labels={}, address=None, ttl=60)
    assert row["id"] == a
    assert row["incarnation"] == 2
    assert row["kept"] == 1
    with pytest.raises(Superseded):
        await beat(store, a, [], incarnation=1)
    assert len((await beat(store, a, ["s"], incarnation=2)).assignments) == 1
    with pytest.raises(NotFound):
        await beat(store, uuid.uuid4(), [])


async def test_a_deleted_stream_is_revoked_and_released_once_stopped(store):
    a = await register(store, "a")
    await store.upsert_stream(StreamSpec("s", "http://x"))
    await run_pass(store)
    assert await store.delete_stream("s") == {str(a)}
    assert await store.get_stream("s") is None
    version = await store.version(a)
    await beat(store, a, [], acked_version=version)
    result = await run_pass(store)
    assert result.finished == 1
    assert (await store.status())["streams"]["moving"] == 0
    with pytest.raises(NotFound):
        await store.delete_stream("s")


async def test_a_heartbeat_that_starts_a_drain_moves_the_generation(store):
    a = await register(store, "a")
    first = await run_pass(store)
    result = await store.heartbeat(a, incarnation=1, running=[], draining=True, metrics={}, ttl=60)
    assert result.became_draining
    after = await run_pass(store, first.generation)
    assert after.generation > first.generation
    again = await store.heartbeat(a, incarnation=1, running=[], draining=True, metrics={}, ttl=60)
    assert not again.became_draining
    assert (await run_pass(store, after.generation)).generation == after.generation
