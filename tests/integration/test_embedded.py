"""Embedded servers: start, adopt, set up the database idempotently, stop."""

from __future__ import annotations

import psycopg
import pytest

from streamorch.backing import endpoints, provision, waits
from streamorch.ops.startup import EmbeddedServices

pytestmark = pytest.mark.anyio


async def test_start_setup_twice_and_stop(make_settings):
    settings = make_settings()
    services = EmbeddedServices(settings, durable=False)
    services.start(settings)
    try:
        first = await provision.setup_database(settings)
        second = await provision.setup_database(settings)
        assert first == {"role_created": True, "database_created": True}
        assert second == {"role_created": False, "database_created": False}

        # Starting again adopts the running servers instead of starting new ones.
        pids = [e.pid for e in services.status()]
        services.start(settings)
        assert [e.pid for e in services.status()] == pids

        target = endpoints.postgres_target(settings)
        assert target.embedded
        with psycopg.connect(target.conninfo) as conn:
            user = conn.execute("SELECT current_user").fetchone()[0]
        assert user == settings.db_user
        assert (await waits.probe_redis(endpoints.redis_target(settings))).ok
    finally:
        services.stop()
    assert not any(e.running for e in services.status())


async def test_data_survives_a_restart(make_settings):
    settings = make_settings()
    services = EmbeddedServices(settings, durable=False)
    services.start(settings)
    try:
        await provision.setup_database(settings)
        conninfo = endpoints.postgres_target(settings).conninfo
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('still here')")
        services.stop()
        services.start(settings)
        with psycopg.connect(endpoints.postgres_target(settings).conninfo) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone()[0] == "still here"
    finally:
        services.stop()
