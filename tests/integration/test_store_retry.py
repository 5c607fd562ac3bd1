"""Conflicts between transactions are retried; the reconciler wakes when a lease ends."""

from __future__ import annotations

import anyio
import psycopg
import pytest

from streamorch.backing import endpoints
from streamorch.core.reconciler import Reconciler
from streamorch.domain.models import Policy
from streamorch.store.database import DatabaseManager
from streamorch.store.postgres import EngineStore
from streamorch.store.retry import retry_conflicts

pytestmark = pytest.mark.anyio


async def _lock_both(
    conninfo: str,
    first: int,
    second: int,
    deadlock_timeout: str,
    *,
    holding: anyio.Event | None = None,
    other: anyio.Event | None = None,
) -> None:
    """Lock row `first`, then `second`; with the events, only once the other side holds
    its first row too (`holding`: set here; `other`: the other side's)."""
    async with await psycopg.AsyncConnection.connect(conninfo) as conn, conn.transaction():
        await conn.execute(f"SET LOCAL deadlock_timeout = '{deadlock_timeout}'")
        await conn.execute("SELECT 1 FROM pairs WHERE id = %s FOR UPDATE", (first,))
        if holding is not None:
            holding.set()
        if other is not None:
            await other.wait()  # both transactions now hold their first row
        await conn.execute("SELECT 1 FROM pairs WHERE id = %s FOR UPDATE", (second,))
        await conn.execute("UPDATE pairs SET n = n + 1 WHERE id = %s", (second,))


async def test_a_transaction_chosen_as_deadlock_victim_is_run_again(postgres_server, database):
    conninfo = postgres_server.conninfo(database)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("CREATE TABLE pairs (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
        await conn.execute("INSERT INTO pairs (id) VALUES (1), (2)")
    attempts = 0
    victim_holds, partner_holds = anyio.Event(), anyio.Event()

    @retry_conflicts
    async def victim() -> str:
        nonlocal attempts
        attempts += 1
        # The short deadlock_timeout makes this side detect the cycle first: PostgreSQL
        # aborts the transaction that runs the detector. The run again goes alone.
        if attempts == 1:
            await _lock_both(conninfo, 1, 2, "50ms", holding=victim_holds, other=partner_holds)
        else:
            await _lock_both(conninfo, 1, 2, "50ms")
        return "done"

    async def partner() -> None:
        await _lock_both(conninfo, 2, 1, "30s", holding=partner_holds, other=victim_holds)

    async with anyio.create_task_group() as tg:
        tg.start_soon(partner)
        assert await victim() == "done"

    assert attempts == 2  # one deadlock, one clean run
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        rows = await (await conn.execute("SELECT id, n FROM pairs ORDER BY id")).fetchall()
    assert rows == [(1, 1), (2, 1)]  # both transactions committed exactly once


async def test_other_database_errors_are_not_retried():
    attempts = 0

    @retry_conflicts
    async def broken() -> None:
        nonlocal attempts
        attempts += 1
        raise psycopg.errors.UniqueViolation("duplicate key")

    with pytest.raises(psycopg.errors.UniqueViolation):
        await broken()
    assert attempts == 1


async def test_the_reconciler_wakes_when_a_lease_ends_not_an_interval_later(settings):
    interval = 30.0  # far longer than the wait below: only the lease-end wake can expire it
    async with DatabaseManager(endpoints.postgres_target(settings), settings) as db:
        store = EngineStore(db)

        async def ignore(_: set[str]) -> None:
            return None

        reconciler = Reconciler(store, Policy(), interval, ignore, lease_ttl=60)
        await store.register(name="short", capacity=1, labels={}, address=None, ttl=1.0)
        reconciler.start()
        try:
            status = "active"
            with anyio.move_on_after(interval / 3):
                while status != "expired":
                    await anyio.sleep(0.1)
                    workers = await store.list_workers(None)
                    status = workers[0]["status"]
        finally:
            await reconciler.stop()
    assert status == "expired"
