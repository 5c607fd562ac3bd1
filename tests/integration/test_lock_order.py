"""Statements that lock many worker rows lock them in one order (by id), so they cannot
deadlock each other: the lease extension of a pass after an outage, and batched
heartbeats. Real PostgreSQL, two connections, the interleaving forced with a poll."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest

from streamorch.backing import endpoints
from streamorch.store.heartbeats import Beat, batch_params
from streamorch.store.queries import sql

pytestmark = pytest.mark.anyio

LOW = uuid.UUID("00000000-0000-4000-8000-000000000001")
HIGH = uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")


async def _connect(settings) -> psycopg.AsyncConnection:
    conninfo = endpoints.postgres_target(settings).conninfo
    return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)


async def _waiting_for_a_lock(watcher: psycopg.AsyncConnection, pid: int) -> bool:
    cur = await watcher.execute(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def test_lease_extension_and_heartbeats_lock_workers_in_one_order(settings):
    setup, beats, extension, watcher = [await _connect(settings) for _ in range(4)]
    async with setup, beats, extension, watcher:
        # HIGH first: a scan in storage order meets it before LOW, the opposite of id order.
        for worker_id, name in ((HIGH, "high"), (LOW, "low")):
            await setup.execute(
                "INSERT INTO workers (id, name, capacity, lease_expires_at) "
                "VALUES (%s, %s, 5, now() + interval '1 minute')",
                (worker_id, name),
            )
        params = batch_params([Beat(w, 1, [], False, {}, None, 60.0) for w in sorted((LOW, HIGH))])
        async with beats.transaction():
            # A heartbeat batch half-way: it has locked LOW and is about to lock HIGH.
            await beats.execute("SELECT 1 FROM workers WHERE id = %s FOR UPDATE", (LOW,))

            async def extend() -> list[uuid.UUID]:
                async with extension.transaction():
                    cur = await extension.execute(sql("grace_leases"), {"ttl": 10.0})
                    return [w for (w,) in await cur.fetchall()]

            extending = asyncio.create_task(extend())
            deadline = time.monotonic() + 30
            while not await _waiting_for_a_lock(watcher, extension.info.backend_pid):
                assert not extending.done(), "the extension did not wait for the heartbeat"
                assert time.monotonic() < deadline, "the extension never waited for a lock"
                await asyncio.sleep(0.01)
            # Locking in storage order, the extension would now hold HIGH and this would
            # deadlock (PostgreSQL aborts one of the two after deadlock_timeout).
            cur = await beats.execute(sql("heartbeats"), params)
            assert len(await cur.fetchall()) == 2
        assert sorted(await extending) == [LOW, HIGH]
