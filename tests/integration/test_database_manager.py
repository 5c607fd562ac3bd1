"""DatabaseManager: retries, clean failures, no leaked connection whatever fails."""

from __future__ import annotations

import time

import psycopg
import pytest

from streamorch.backing import endpoints
from streamorch.domain.errors import ServiceError, StoreError
from streamorch.store.database import DatabaseManager

pytestmark = pytest.mark.anyio


def backend_count(postgres_server, dbname: str) -> int:
    with psycopg.connect(postgres_server.admin_conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (dbname,)
        ).fetchone()
    return int(row[0])


def backends_left(postgres_server, dbname: str, timeout: float = 5.0) -> int:
    """The backend count once closed connections are gone: a backend exits a moment
    after its client disconnects, so a count taken at once can still see it."""
    deadline = time.monotonic() + timeout
    while (count := backend_count(postgres_server, dbname)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


async def test_open_use_and_close(settings, postgres_server, database):
    async with DatabaseManager(endpoints.postgres_target(settings), settings) as db:
        probe = await db.verify_connection()
        assert probe.ok
        assert await db.schema_version() >= 1
        assert backend_count(postgres_server, database) >= settings.db_pool_min_size
    assert not db.is_open
    assert backends_left(postgres_server, database) == 0


async def test_bad_password_is_a_clean_error_without_leak(make_settings, postgres_server, database):
    url = postgres_server.url(database)
    bad = url.replace(url.split("//")[1].split("@")[0], "postgres:wrong")
    settings = make_settings(DATABASE_URL=bad, DB_MAX_RETRIES="3")
    db = DatabaseManager(endpoints.postgres_target(settings), settings)
    with pytest.raises(ServiceError) as caught:
        await db.connect_with_retry()
    assert caught.value.problem.code == "postgres.auth_failed"
    assert not db.is_open
    await db.close_connection_safely()  # safe although nothing was opened
    assert backends_left(postgres_server, database) == 0


async def test_unreachable_server_retries_then_fails(make_settings):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = make_settings(
        DATABASE_URL=f"postgresql://u:p@127.0.0.1:{port}/db", DB_MAX_RETRIES="2", DB_TIMEOUT="1"
    )
    db = DatabaseManager(endpoints.postgres_target(settings), settings)
    with pytest.raises(ServiceError) as caught:
        await db.connect_with_retry()
    assert caught.value.problem.code == "postgres.unreachable"
    assert not db.is_open


async def test_server_gone_mid_way_reports_and_closes(settings, postgres_server, database):
    db = DatabaseManager(endpoints.postgres_target(settings), settings)
    await db.connect_with_retry()
    with psycopg.connect(postgres_server.admin_conninfo, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
    # Connections killed under it: the pool replaces them, a check answers again.
    probe = await db.verify_connection(timeout=5)
    if not probe.ok:  # the first checkout may meet a dead connection; the next must not
        probe = await db.verify_connection(timeout=5)
    assert probe.ok
    await db.close_connection_safely()
    await db.close_connection_safely()  # idempotent
    assert backends_left(postgres_server, database) == 0


async def test_pool_use_before_open_is_a_store_error(settings):
    db = DatabaseManager(endpoints.postgres_target(settings), settings)
    with pytest.raises(StoreError, match="connect_with_retry"):
        async with db.connection():
            pass


async def test_server_stopped_under_the_pool(make_settings):
    """PostgreSQL stops while the pool is open: checks report it, closing neither hangs
    nor raises, and the pool works again once the server is back."""
    from streamorch.backing import provision
    from streamorch.ops.startup import EmbeddedServices

    settings = make_settings(REDIS_URL="redis://127.0.0.1:1/0", DB_TIMEOUT="2")
    services = EmbeddedServices(settings, durable=False)
    services.start(settings)
    try:
        await provision.setup_database(settings)
        db = DatabaseManager(endpoints.postgres_target(settings), settings)
        await db.connect_with_retry()
        assert (await db.verify_connection()).ok

        services.postgres.stop()
        down = await db.verify_connection(timeout=3)
        assert not down.ok
        assert down.problem is not None

        services.postgres.start()
        for _ in range(20):  # the pool reconnects by itself; no restart of the manager
            if (await db.verify_connection(timeout=3)).ok:
                break
        assert (await db.verify_connection(timeout=3)).ok
        await db.close_connection_safely()
        assert not db.is_open
    finally:
        services.stop()


async def test_unprepared_connections_plan_every_statement_with_its_values(settings):
    # Bulk changes and reconcile passes pass arrays of any size; a prepared statement
    # may settle on a generic plan, which for `= ANY(<huge array>)` is a linear search.
    async with DatabaseManager(endpoints.postgres_target(settings), settings) as db:
        query = "SELECT count(*) FROM cluster WHERE cluster_id::text = ANY(%(ids)s::text[])"

        async def prepared_after_runs(prepared: bool) -> int:
            async with db.connection(prepared=prepared) as conn:
                for _ in range(8):  # past psycopg's prepare threshold (5)
                    await conn.execute(query, {"ids": ["x"]})
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%ANY%'"
                )
                return (await cur.fetchone())[0]

        assert await prepared_after_runs(prepared=False) == 0
        assert await prepared_after_runs(prepared=True) == 1
        async with db.connection() as conn:
            assert conn.prepare_threshold is not None  # restored for the next user
            cur = await conn.execute("SHOW plan_cache_mode")
            assert (await cur.fetchone())[0] == "auto"
        async with db.heartbeat_connection() as conn:  # only the heartbeat statement's
            cur = await conn.execute("SHOW plan_cache_mode")
            assert (await cur.fetchone())[0] == "force_generic_plan"
