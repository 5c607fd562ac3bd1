"""Compat (the original protocol's calls) on the in-memory engine store and a scripted
store for the original protocol's own tables."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from streamorch.config import load_settings
from streamorch.core.compat import Compat
from streamorch.core.service import Orchestrator
from streamorch.store.memory import MemoryRetentionStore, MemoryStore
from streamorch.store.memory_notifier import MemoryNotifier

pytestmark = pytest.mark.anyio


class ScriptedCompatStore:
    """The original protocol's store: instances by name, hand-outs from a fixed pool."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.live: set[str] = set()
        self.pool: list[str] = []
        self.pool_checks = 0
        self.recovered: list[uuid.UUID] = []

    async def instance(self, name: str) -> dict[str, Any] | None:
        return self.rows.get(name)

    async def mark_original(
        self, worker_id: uuid.UUID, *, generation: str, metrics: dict[str, Any]
    ) -> list[str]:
        return []

    async def beat(
        self, name: str, *, metrics: dict[str, Any], generation: str | None, ttl: float
    ) -> bool:
        return name in self.live

    async def recover(self, worker_id: uuid.UUID) -> tuple[list[str], list[str]]:
        self.recovered.append(worker_id)
        return ["1"], ["2"]

    async def pool_exists(self) -> bool:
        self.pool_checks += 1
        return bool(self.pool)

    async def hand_out(
        self, worker_id: uuid.UUID, *, limit: int, from_pool: bool, once: bool = False
    ) -> tuple[list[str], dict[str, Any] | None]:
        keys = self.pool[:limit] if from_pool else []
        del self.pool[: len(keys)]
        return keys, {"status": "active", "room": 5, "unclaimed": []}

    async def release(self, worker_id: uuid.UUID, keys: list[str]) -> list[str]:
        self.pool += keys
        return keys

    async def instances(self, name: str | None = None) -> list[dict[str, Any]]:
        return []

    async def assignments(self) -> list[dict[str, Any]]:
        return []

    async def urls(self, keys: list[str]) -> dict[str, str]:
        return {k: f"http://x/{k}" for k in keys}


@pytest.fixture
def compat_store() -> ScriptedCompatStore:
    return ScriptedCompatStore()


@pytest.fixture
def compat(tmp_path: Path, compat_store: ScriptedCompatStore) -> Compat:
    store = MemoryStore()
    orch = Orchestrator(
        load_settings({"STREAMORCH_DATA_DIR": str(tmp_path)}),
        store=store,
        notifier=MemoryNotifier(),
        retention=MemoryRetentionStore(store),
        compat=compat_store,
    )
    return Compat(orch)


async def test_a_heartbeat_renews_creates_or_revives(compat, compat_store):
    assert await compat.heartbeat("s1", metrics={}, generation="C1") == "created"
    worker = await compat.orch.find_worker(name="s1")
    assert worker is not None
    assert worker["kind"] == "original"
    compat_store.rows["s1"] = {
        "id": worker["id"],
        "capacity": 10,
        "labels": {},
        "address": None,
        "generation": "C1",
    }
    compat_store.live.add("s1")
    assert await compat.heartbeat("s1", metrics={}, generation="C1") == "renewed"
    compat_store.live.clear()  # its lease ran out while it kept running
    assert await compat.heartbeat("s1", metrics={}, generation="C1") == "revived"
    assert compat_store.recovered == [worker["id"]]


async def test_a_pull_hands_out_from_the_pool_and_an_empty_pool_is_remembered(compat, compat_store):
    assert (await compat.pull("s1", 2))[0] == "no_streams"  # not registered
    compat_store.rows["s1"] = {"id": uuid.uuid4(), "generation": "C1"}
    assert await compat.pull("s1", 2) == ("no_streams", [], "no stream is waiting for an instance")
    assert await compat.pull("s1", 2) == ("no_streams", [], "no stream is waiting for an instance")
    assert compat_store.pool_checks == 1  # the "no" is reused for a while
    await compat.release("s1", [7])  # what it freed waits for the next puller
    assert await compat.pull("s1", 2) == ("assigned", [7], "1 stream(s) assigned")
    assert await compat.urls([7]) == {"7": "http://x/7"}
