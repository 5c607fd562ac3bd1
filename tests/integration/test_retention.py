"""Retention: departed workers are forgotten, old events deleted, in batches, by one
replica at a time; events keep their worker's name. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from streamorch.backing import endpoints
from streamorch.core.retention import Retention
from streamorch.domain.errors import Conflict, NotFound
from streamorch.store.database import DatabaseManager
from streamorch.store.postgres import EngineStore
from streamorch.store.retention import RETENTION_LOCK_KEY, RetentionStore
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(settings):
    async with DatabaseManager(endpoints.postgres_target(settings), settings) as db:
        yield db


@pytest.fixture
def engine(db):
    return EngineStore(db)


@pytest.fixture
def retention_store(db):
    return RetentionStore(db)


def retention(store, make_settings, **env: str) -> Retention:
    settings = make_settings(**{"RETENTION_BATCH_SIZE": "10", **env})
    return Retention(store, settings, pause=0)


async def register(engine: EngineStore, name: str) -> uuid.UUID:
    row, _ = await engine.register(name=name, capacity=5, labels={}, address=None, ttl=60)
    return row["id"]


async def sql(db: DatabaseManager, statement: str, params: dict | None = None) -> list[tuple]:
    async with db.connection(prepared=False) as conn:
        cur = await conn.execute(statement, params or {})
        return await cur.fetchall() if cur.description else []


async def depart_long_ago(db: DatabaseManager, ids: list[uuid.UUID], days: float = 2) -> None:
    """Backdate departures, as if they happened `days` ago."""
    await sql(
        db,
        "UPDATE workers SET lease_expires_at = now() - make_interval(days => %(d)s) "
        "WHERE id = ANY(%(ids)s)",
        {"ids": ids, "d": days},
    )


async def names(db: DatabaseManager) -> set[str]:
    return {n for (n,) in await sql(db, "SELECT name FROM workers")}


async def test_departed_workers_are_forgotten_after_the_retention_and_events_keep_names(
    db, engine, retention_store, make_settings
):
    await register(engine, "live")
    left = await register(engine, "left-long-ago")
    recent = await register(engine, "left-just-now")
    expired = await register(engine, "expired-long-ago")
    for worker in (left, recent):
        await engine.deregister(worker, force=False)
    await sql(db, "UPDATE workers SET status = 'expired' WHERE id = %(id)s", {"id": expired})
    await depart_long_ago(db, [left, expired])
    # An event written before events carried names (schema 0007 and earlier).
    await sql(
        db,
        "INSERT INTO events (kind, worker_id, reason) VALUES ('worker_left', %(id)s, 'legacy')",
        {"id": left},
    )

    report = await retention(retention_store, make_settings, WORKER_RETENTION="86400").run_once()

    assert report.workers == 2
    assert await names(db) == {"live", "left-just-now"}
    events = await engine.events(since=0, limit=1000, stream=None)
    by_worker = {(e["worker_id"], e["kind"], e["reason"]): e["worker_name"] for e in events}
    assert by_worker[(left, "worker_joined", "registered")] == "left-long-ago"
    assert by_worker[(left, "worker_left", "legacy")] == "left-long-ago"
    summary = [e for e in events if e["kind"] == "workers_forgotten"]
    assert [(e["reason"], e["details"]["count"]) for e in summary] == [("retention", 2)]


async def test_a_worker_that_came_back_and_one_still_in_a_move_are_kept(
    db, engine, retention_store, make_settings
):
    back = await register(engine, "back")
    await engine.deregister(back, force=False)
    await depart_long_ago(db, [back])
    await register(engine, "back")  # the same name registers again: live, same row
    target = await register(engine, "target")
    await engine.deregister(target, force=False)
    await depart_long_ago(db, [target])
    owner = await register(engine, "owner")
    # A move towards `target` that nothing undid yet (its row is still referenced).
    await sql(db, "INSERT INTO streams (key, url) VALUES ('s1', 'http://x/1')")
    await sql(
        db,
        "INSERT INTO assignments (stream_key, worker_id, token, state, target_id, reason) "
        "VALUES ('s1', %(o)s, 1, 'revoking', %(t)s, 'rebalance')",
        {"o": owner, "t": target},
    )

    report = await retention(retention_store, make_settings).run_once()

    assert report.workers == 0
    assert await names(db) == {"back", "target", "owner"}


async def test_events_are_deleted_by_age_and_by_count_in_batches(
    db, retention_store, make_settings
):
    await sql(
        db,
        "INSERT INTO events (kind, at) SELECT 'old', now() - interval '8 days' "
        "FROM generate_series(1, 35)",
    )
    await sql(db, "INSERT INTO events (kind) SELECT 'new' FROM generate_series(1, 30)")
    calls = 0
    purge = retention_store.purge_events

    async def counted(**kw):
        nonlocal calls
        calls += 1
        return await purge(**kw)

    retention_store.purge_events = counted  # type: ignore[method-assign]
    keep_a_week = retention(
        retention_store, make_settings, EVENT_RETENTION="604800", EVENT_MAX_COUNT="0"
    )
    assert (await keep_a_week.run_once()).events == 35
    assert calls == 4  # batches of 10: 10, 10, 10, 5
    kinds = await sql(db, "SELECT kind, count(*) FROM events GROUP BY kind")
    assert dict(kinds) == {"new": 30}

    keep_twelve = retention(
        retention_store, make_settings, EVENT_RETENTION="0", EVENT_MAX_COUNT="12"
    )
    assert (await keep_twelve.run_once()).events == 18
    newest = [i for (i,) in await sql(db, "SELECT id FROM events ORDER BY id")]
    assert len(newest) == 12
    assert newest[-1] - newest[0] == 11  # the newest twelve


async def test_zero_keeps_history_forever(db, engine, retention_store, make_settings):
    gone = await register(engine, "gone")
    await engine.deregister(gone, force=False)
    await depart_long_ago(db, [gone], days=400)
    await sql(db, "INSERT INTO events (kind, at) VALUES ('old', now() - interval '400 days')")
    keep = retention(
        retention_store,
        make_settings,
        WORKER_RETENTION="0",
        EVENT_RETENTION="0",
        EVENT_MAX_COUNT="0",
    )
    assert not keep.enabled
    keep.start()  # nothing to run: no task
    await keep.stop()
    report = await keep.run_once()
    assert (report.workers, report.events) == (0, 0)
    assert "gone" in await names(db)


async def test_one_replica_at_a_time(db, settings, retention_store, make_settings):
    await sql(
        db,
        "INSERT INTO events (kind, at) SELECT 'old', now() - interval '8 days' "
        "FROM generate_series(1, 5)",
    )
    other = await psycopg.AsyncConnection.connect(
        endpoints.postgres_target(settings).conninfo, autocommit=True
    )
    async with other:
        async with other.transaction():
            await other.execute("SELECT pg_advisory_xact_lock(%s)", (RETENTION_LOCK_KEY,))
            report = await retention(retention_store, make_settings).run_once()
            assert report.skipped
            assert report.events == 0
        report = await retention(retention_store, make_settings).run_once()
    assert not report.skipped
    assert report.events == 5


async def test_forget_now_only_a_departed_worker(db, engine, retention_store):
    live = await register(engine, "live")
    with pytest.raises(Conflict) as refused:
        await retention_store.forget(live)
    assert refused.value.code == "worker_not_departed"
    await engine.deregister(live, force=False)
    assert await retention_store.forget(live) == "live"
    assert await names(db) == set()
    with pytest.raises(NotFound):
        await retention_store.forget(live)


async def test_the_loop_runs_rounds_until_stopped(db, retention_store, make_settings):
    await sql(
        db,
        "INSERT INTO events (kind, at) SELECT 'old', now() - interval '8 days' "
        "FROM generate_series(1, 25)",
    )
    loop = retention(retention_store, make_settings, RETENTION_INTERVAL="0.05")
    rounds: list[int] = []
    loop.observers.append(lambda report: rounds.append(report.events))
    loop.start()
    loop.start()  # idempotent: one loop
    try:
        await wait_until(lambda: len(rounds) >= 3, timeout=30, what="three rounds")
    finally:
        await loop.stop()
        await loop.stop()  # idempotent
    assert rounds[0] == 25
    assert set(rounds[1:]) == {0}
    assert loop.stats.events == 25
    assert all(task.get_name() != "retention" for task in asyncio.all_tasks())
