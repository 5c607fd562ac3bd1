"""The Orchestrator on the in-memory store: each call's change, and who is woken."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamorch.config import Settings, load_settings
from streamorch.core.service import Orchestrator
from streamorch.domain.errors import Conflict, Forbidden, NotFound
from streamorch.domain.records import StreamSpec
from streamorch.store.memory import MemoryRetentionStore, MemoryStore
from streamorch.store.memory_notifier import MemoryNotifier

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        {
            "STREAMORCH_DATA_DIR": str(tmp_path),
            "RECONCILE_PLAN_IN_THREAD": "false",
            "PLACEMENT_SETTLE_S": "0",  # place at once: no waiting for registrations
        }
    )


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def notifier() -> MemoryNotifier:
    return MemoryNotifier()


@pytest.fixture
def orch(settings: Settings, store: MemoryStore, notifier: MemoryNotifier) -> Orchestrator:
    return Orchestrator(
        settings, store=store, notifier=notifier, retention=MemoryRetentionStore(store)
    )


async def worker(orch: Orchestrator, name: str = "w1") -> dict:
    return await orch.register(name=name, capacity=4, labels={}, address=None)


async def test_a_new_stream_wakes_the_reconciler_and_explains_why_it_waits(orch):
    created, row = await orch.put_stream(StreamSpec("s", "http://x"))
    assert created
    assert orch.reconciler._wake.is_set()
    assert row["worker_id"] is None
    assert "no" in row["reason"].lower()  # no live worker to run it
    created, _ = await orch.put_stream(StreamSpec("s", "http://y"))
    assert not created


async def test_a_pass_grants_and_the_worker_hears_of_it(orch, notifier):
    w = await worker(orch)
    await orch.put_stream(StreamSpec("s", "http://x"))
    version = (await orch.desired(w["id"], version=None, wait=0))["version"]
    poll = asyncio.create_task(orch.desired(w["id"], version=version, wait=5))
    await asyncio.sleep(0)
    result = await orch.reconciler.run_once()
    assert str(w["id"]) in result.touched
    answer = await asyncio.wait_for(poll, 5)
    assert answer["version"] > version
    assert '"stream": "s"' in answer["assignments"]
    assert notifier.published[-1] == {str(w["id"])}
    assert (await orch.get_stream("s"))["worker_name"] == "w1"


async def test_a_heartbeat_needs_the_current_secret_and_starting_a_drain_replans(orch, store):
    w = await worker(orch)
    with pytest.raises(Forbidden):
        await orch.check_secret(w["id"], "wrong")
    await orch.check_secret(w["id"], w["secret"])
    generation = store.state.generation
    orch.reconciler._wake.clear()
    result = await orch.heartbeat(
        w["id"], incarnation=1, running=[], draining=True, metrics={}, secret=w["secret"]
    )
    assert result.became_draining
    assert store.state.generation > generation
    assert orch.reconciler._wake.is_set()


async def test_removing_a_worker_that_owns_streams_takes_force(orch, notifier):
    w = await worker(orch)
    await orch.put_stream(StreamSpec("s", "http://x"))
    await orch.reconciler.run_once()
    with pytest.raises(Conflict):
        await orch.deregister(w["id"], force=False)
    await orch.deregister(w["id"], force=True)
    assert notifier.published[-1] == {str(w["id"])}
    assert (await orch.worker(worker_id=w["id"]))["status"] == "left"
    assert await orch.forget(w["id"]) == "w1"
    with pytest.raises(NotFound):
        await orch.worker(worker_id=w["id"])


async def test_status_counts_the_fleet_and_its_load(orch):
    await worker(orch, "a")
    await worker(orch, "b")
    await orch.bulk([StreamSpec(f"s{i}", "http://x") for i in range(4)], "upsert")
    await orch.reconciler.run_once()
    status = await orch.status()
    assert status["streams"]["assigned"] == 4
    assert status["workers"]["active"] == 2
    assert status["load"] == 4
    assert status["capacity"] == 8
    assert status["reconciler"]["passes"] == 1
    kinds = [e["kind"] for e in await orch.events(limit=100, stream=None)]
    assert kinds.count("assigned") == 4
