"""Migrations against a real PostgreSQL: order, idempotence, locking, safety."""

from __future__ import annotations

import anyio
import psycopg
import pytest

from streamorch.domain.errors import MigrationError
from streamorch.store import migrations

pytestmark = pytest.mark.anyio


async def _connect(postgres_server, dbname: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(postgres_server.conninfo(dbname), autocommit=True)


async def test_migrate_applies_everything_once(postgres_server, empty_database):
    async with await _connect(postgres_server, empty_database) as conn:
        assert await migrations.current_version(conn) == 0
        first = await migrations.migrate(conn)
        second = await migrations.migrate(conn)
        assert [m.version for m in first] == [m.version for m in migrations.available()]
        assert second == []
        assert await migrations.current_version(conn) == migrations.expected_version()
        cur = await conn.execute("SELECT count(*) FROM cluster")
        assert (await cur.fetchone())[0] == 1


async def test_concurrent_migrations_serialise(postgres_server, empty_database):
    """Replicas starting together: exactly one applies each migration."""
    applied: list[int] = []

    async def run() -> None:
        async with await _connect(postgres_server, empty_database) as conn:
            applied.extend(m.version for m in await migrations.migrate(conn))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(run)
    assert sorted(applied) == [m.version for m in migrations.available()]


async def test_edited_migration_is_refused(postgres_server, database):
    async with await _connect(postgres_server, database) as conn:
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrations.migrate(conn)


async def test_failed_migration_leaves_previous_version(
    postgres_server, empty_database, monkeypatch
):
    broken = migrations.Migration(9999, "broken", "CREATE TABLE half_done (x int); SELECT 1/0;")
    real = migrations.available()
    monkeypatch.setattr(migrations, "available", lambda: [*real, broken])
    async with await _connect(postgres_server, empty_database) as conn:
        with pytest.raises(MigrationError, match="rolled back"):
            await migrations.migrate(conn)
        assert await migrations.current_version(conn) == real[-1].version
        cur = await conn.execute("SELECT to_regclass('half_done')")
        assert (await cur.fetchone())[0] is None


async def test_migrate_needs_autocommit(postgres_server, empty_database):
    conn = await psycopg.AsyncConnection.connect(postgres_server.conninfo(empty_database))
    async with conn:
        with pytest.raises(MigrationError, match="autocommit"):
            await migrations.migrate(conn)


async def test_unknown_newer_migration_is_refused_before_anything_runs(postgres_server, database):
    async with await _connect(postgres_server, database) as conn:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (9998, 'future', 'x')"
        )
        with pytest.raises(MigrationError, match=r"does not know: \[9998\]"):
            await migrations.migrate(conn)
