"""The Reconciler and the pass it sequences (core/engine.py), on the in-memory store."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest

from streamorch.core import engine
from streamorch.core.reconciler import Reconciler
from streamorch.domain.errors import StoreError, TransactionConflict
from streamorch.domain.models import Policy
from streamorch.domain.records import StreamSpec
from streamorch.store.memory import MemoryStore

pytestmark = pytest.mark.anyio

INLINE = engine.Offloader(in_thread=False)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def reconciler(store: Any, touched: list[set[str]] | None = None, **kw: Any) -> Reconciler:
    async def on_touched(ids: set[str]) -> None:
        (touched if touched is not None else []).append(ids)

    kw.setdefault("lease_ttl", 10.0)
    return Reconciler(store, Policy(), 0.05, on_touched, offload=INLINE, **kw)


async def fleet(store: MemoryStore, workers: int, streams: int) -> list[uuid.UUID]:
    ids = []
    for i in range(workers):
        row, _ = await store.register(name=f"w{i}", capacity=10, labels={}, address=None, ttl=10)
        ids.append(row["id"])
    await store.bulk([StreamSpec(f"s{i}", "http://x") for i in range(streams)], "upsert")
    return ids


async def test_a_pass_places_notifies_and_remembers_a_settled_generation():
    store = MemoryStore()
    await fleet(store, 2, 6)
    touched: list[set[str]] = []
    rec = reconciler(store, touched)
    result = await rec.run_once()
    assert len(result.plan.grants) == 6
    assert result.planned
    assert touched == [result.touched]
    assert len(result.touched) == 2
    assert rec.stats.passes == 1
    assert rec.stats.grants == 6
    # Not settled yet (the pass changed things): the next pass plans again, then settles.
    assert (await rec.run_once()).planned
    assert not (await rec.run_once()).planned


async def test_the_outage_rule_extends_leases_instead_of_expiring_the_fleet():
    clock = Clock()
    store = MemoryStore(clock)
    await fleet(store, 3, 3)
    rec = reconciler(store)
    await rec.run_once()
    clock.now += 30  # no pass for three leases: every lease has ended
    result = await rec.run_once()
    assert result.graced == 3
    assert result.expired == []
    expired: list[str] = []
    for _ in range(3):  # passes run again: a lease later, silence is proof
        clock.now += 4
        expired += (await rec.run_once()).expired
    assert len(expired) == 3


async def test_a_lease_ends_only_past_this_servers_recent_lag():
    clock = Clock()
    store = MemoryStore(clock)
    (w,) = await fleet(store, 1, 1)
    await engine.reconcile_pass(store, Policy(), None, lease_ttl=10, offload=INLINE)
    for _ in range(2):  # passes every 4.9 s: no outage
        clock.now += 4.9
        await engine.reconcile_pass(store, Policy(), None, lease_ttl=10, offload=INLINE)
    clock.now += 0.3  # the lease ended 0.1 s ago
    spared = await engine.reconcile_pass(
        store, Policy(), None, lease_ttl=10, expiry_grace_s=0.5, offload=INLINE
    )
    assert spared.expired == []
    store.pending = [w]  # a heartbeat of it waits in this server: alive
    assert (await engine.reconcile_pass(store, Policy(), None, offload=INLINE)).expired == []
    store.pending = []
    assert (await engine.reconcile_pass(store, Policy(), None, offload=INLINE)).expired == [str(w)]


async def test_a_pass_that_lost_a_conflict_runs_again_and_a_failed_one_leaves_nothing():
    store = MemoryStore()
    await fleet(store, 1, 2)
    calls = 0
    real = store.pass_tx

    def flaky(offload: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TransactionConflict("serialization failure")
        return real(offload)

    store.pass_tx = flaky  # type: ignore[method-assign]
    result = await engine.reconcile_pass(store, Policy(), None, offload=INLINE)
    assert calls == 2
    assert len(result.plan.grants) == 2


async def test_a_pass_that_fails_midway_rolls_back():
    store = MemoryStore()
    await fleet(store, 1, 2)

    def broken(snapshot: Any, policy: Any) -> Any:
        raise RuntimeError("placement bug")

    original = engine.plan_paused
    engine.plan_paused = broken  # type: ignore[assignment]
    try:
        with pytest.raises(RuntimeError):
            await engine.reconcile_pass(store, Policy(), None, offload=INLINE)
    finally:
        engine.plan_paused = original  # type: ignore[assignment]
    assert store.state.assignments == {}
    assert store.state.last_pass_at is None
    assert not store._pass_locked


async def test_a_store_error_is_retried_with_back_off(caplog):
    store = MemoryStore()
    rec = reconciler(store)
    failures = 0

    async def failing() -> Any:
        nonlocal failures
        failures += 1
        if failures >= 2:
            rec._stopping = True
        raise StoreError("database away")

    rec.run_once = failing  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        await rec.run()
    assert failures == 2
    assert rec.stats.state == "stopped"
    assert rec.stats.last_error == "database away"
    assert "reconcile pass failed" in caplog.text


async def test_an_unexpected_error_is_logged_reported_at_once_and_re_raised(caplog):
    store = MemoryStore()
    await fleet(store, 1, 1)
    rec = reconciler(store)

    async def bug() -> Any:
        raise KeyError("a broken invariant")

    rec.run_once = bug  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR), pytest.raises(KeyError):
        await rec.run()
    assert rec.stats.state == "failed"
    assert rec.stats.fatal_error is not None
    assert "broken invariant" in rec.stats.fatal_error
    record = next(r for r in caplog.records if getattr(r, "action", "") == "reconciler_failed")
    assert record.exc_info is not None  # the traceback is in the log


async def test_after_an_unexpected_error_the_loop_runs_again_and_recovers(caplog):
    store = MemoryStore()
    await fleet(store, 1, 1)
    rec = reconciler(store, restart_backoff_s=(0.01, 0.04))
    real = rec.run_once
    calls = 0
    states: list[str] = []

    async def bug_twice() -> Any:
        nonlocal calls
        calls += 1
        states.append(rec.stats.state)
        if calls <= 2:
            raise KeyError("a broken invariant")
        return await real()

    rec.run_once = bug_twice  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO):
        rec.start()
        for _ in range(500):
            if rec.stats.state == "running" and rec.stats.passes:
                break
            await asyncio.sleep(0.01)
        await rec.stop()  # reported already: stopping does not raise it again
    assert calls >= 3
    assert states[:3] == ["running", "failed", "failed"]  # failed until a pass succeeded
    assert rec.stats.restarts == 2
    assert rec.stats.passes >= 1
    assert "broken invariant" in (rec.stats.fatal_error or "")
    actions = [getattr(r, "action", "") for r in caplog.records]
    assert actions.count("reconciler_failed") == 2
    assert "reconciler_recovered" in actions
    assert rec.stats.state == "stopped"


async def test_stop_ends_a_running_loop():
    store = MemoryStore()
    rec = reconciler(store)
    rec.start()
    await asyncio.sleep(0)
    await rec.stop()
    assert rec.stats.state == "stopped"
