"""Graceful degradation with real servers: an optional module missing, Redis stopped and
started again, PostgreSQL stopped and started again — under a running orchestrator with
live (simulated) workers.

Each outage test starts its own Valkey or PostgreSQL, so stopping it touches no other
test. Waits are generous bounds, not speed checks: the times are measured by
bench/health.py.
"""

from __future__ import annotations

import logging
import sys

import anyio
import httpx
import psycopg
import pytest

from streamorch.backing.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey
from streamorch.store import migrations
from tests.asgi import serving
from tests.conftest import FAST_ENGINE
from tests.support.fleet import Fleet, all_events
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

KEYS = {"s1", "s2", "s3", "s4"}


async def status_of(client: httpx.AsyncClient, path: str) -> tuple[int, dict]:
    response = await client.get(path)
    return response.status_code, response.json()


def logged(caplog, action: str, service: str | None = None) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if getattr(r, "action", None) == action
        and (service is None or getattr(r, "service", None) == service)
    ]


async def place(client: httpx.AsyncClient, fleet: Fleet, keys: set[str]) -> None:
    for key in sorted(keys):
        assert (await client.put(f"/v1/streams/{key}", json={"url": "http://x"})).is_success
    await fleet.wait_until(lambda: fleet.runs_exactly(keys), what=f"{sorted(keys)} placed")


# -- an optional module missing -----------------------------------------------------------


async def test_missing_optional_module_costs_only_its_feature(monkeypatch, caplog, settings):
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` now fails
    caplog.set_level(logging.INFO)
    async with serving(settings) as client:
        code, body = await status_of(client, "/health")
        metrics = (await client.get("/metrics")).text
        async with Fleet(client) as fleet:
            await fleet.start(1)
            await place(client, fleet, {"s1"})

    warnings = logged(caplog, "optional_module_missing")
    assert len(warnings) == 1
    assert "system metrics" in warnings[0].getMessage()
    assert warnings[0].fix == "pip install 'streamorch[system-metrics]'"
    assert code == 200
    assert body["status"] == "healthy"
    psutil = body["application_components"]["psutil"]
    assert psutil["status"] == "unavailable"
    assert psutil["install"] == "pip install 'streamorch[system-metrics]'"
    assert body["system_metrics"] is None
    assert [e["code"] for e in body["errors"]] == ["module.unavailable"]
    assert 'streamorch_optional_module_available{module="psutil"} 0.0' in metrics


# -- Redis stopped and started again ----------------------------------------------------


async def test_redis_outage_degrades_and_recovers(
    make_settings, postgres_server, database, data_dir, caplog
):
    caplog.set_level(logging.INFO)
    valkey = EmbeddedValkey(DataDir(data_dir / "valkey-under-test"))
    port = valkey.start().port
    settings = make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=f"redis://:{valkey.password}@127.0.0.1:{port}/0",
        **FAST_ENGINE,
    )
    try:
        async with serving(settings) as client, Fleet(client) as fleet:
            notifier = client.app.state.runtime.orchestrator.notifier
            await fleet.start(2)
            await place(client, fleet, KEYS)
            await wait_until(lambda: notifier.listening["redis"], what="Redis listener")

            await anyio.to_thread.run_sync(valkey.stop)

            async def degraded() -> bool:
                return (await status_of(client, "/health"))[1]["degraded"] == ["redis"]

            await wait_until(degraded, what="/health degraded")
            code, body = await status_of(client, "/health")
            assert code == 200
            assert body["status"] == "healthy"  # original clients stay connected (ADR 11)
            assert body["services"]["redis"]["details"]["code"] == "redis.unreachable"
            assert body["errors"][0]["service"] == "redis"
            assert "start Redis" in body["errors"][0]["suggestion"]
            assert (await client.get("/ready")).status_code == 200

            # Workers keep heartbeating and get new assignments (PostgreSQL notifications).
            beats = {w.name: w.heartbeats for w in fleet.live}
            pg_wakeups = notifier.received["postgresql"]
            await place(client, fleet, {*KEYS, "s5"})
            await wait_until(
                lambda: all(w.heartbeats >= beats[w.name] + 3 for w in fleet.live),
                what="heartbeats during the outage",
            )
            assert notifier.received["postgresql"] > pg_wakeups
            assert (await client.get("/ready")).status_code == 200

            await anyio.to_thread.run_sync(valkey.start)

            async def healthy() -> bool:
                body = (await status_of(client, "/health"))[1]
                return body["status"] == "healthy" and body["degraded"] == []

            await wait_until(healthy, what="/health healthy again")
            await wait_until(lambda: notifier.listening["redis"], what="Redis listener back")
            assert fleet.runs_exactly({*KEYS, "s5"})
            assert fleet.problems() == []
    finally:
        valkey.stop()
    assert len(logged(caplog, "service_unavailable", "redis")) == 1
    assert len(logged(caplog, "service_recovered", "redis")) == 1


# -- PostgreSQL stopped and started again -----------------------------------------------


@pytest.fixture
def own_postgres(data_dir):
    """A PostgreSQL for this test alone, with a migrated database `streamorch`."""
    pg = EmbeddedPostgres(DataDir(data_dir / "pg-under-test"), durable=False)
    port = pg.start(timeout=60).port
    assert port is not None
    with psycopg.connect(pg.superuser_conninfo(port), autocommit=True) as conn:
        conn.execute("CREATE DATABASE streamorch")

    async def migrate() -> None:
        conn = await psycopg.AsyncConnection.connect(
            pg.superuser_conninfo(port, "streamorch"), autocommit=True
        )
        async with conn:
            await migrations.migrate(conn)

    anyio.run(migrate)
    url = f"postgresql://postgres:{pg.superuser_password}@127.0.0.1:{port}/streamorch"
    try:
        yield pg, url
    finally:
        pg.stop()


async def test_postgres_outage_is_unready_then_recovers_fairly(
    make_settings, own_postgres, redis_url, caplog
):
    caplog.set_level(logging.INFO)
    pg, url = own_postgres
    lease_ttl = 3.0
    settings = make_settings(
        DATABASE_URL=url,
        REDIS_URL=redis_url,
        HEARTBEAT_INTERVAL="0.3",
        LEASE_TTL=str(lease_ttl),
        RECONCILE_INTERVAL="0.1",
        DB_TIMEOUT="1",
    )
    async with serving(settings) as client, Fleet(client) as fleet:
        await fleet.start(2)
        await place(client, fleet, KEYS)
        worker = fleet["w000"]

        await anyio.to_thread.run_sync(pg.stop)
        stopped = anyio.current_time()

        async def unready() -> bool:
            return (await client.get("/ready")).status_code == 503

        await wait_until(unready, what="/ready 503")
        code, body = await status_of(client, "/ready")
        assert body["services"]["postgresql"]["details"]["code"].startswith("postgres.")
        code, body = await status_of(client, "/health")
        assert code == 503
        assert body["status"] == "unhealthy"
        cause = body["errors"][0]
        assert cause["service"] == "postgresql"
        assert cause["code"].startswith("postgres.")
        assert cause["error"]
        assert cause["suggestion"]
        code, detailed = await status_of(client, "/health/detailed")
        assert code == 503
        assert "PostgreSQL is down" in detailed["orchestrator"]["error"]
        assert detailed["history"]["postgresql"]["available"] is False
        assert detailed["history"]["postgresql"]["failures"] >= 1
        assert cause["suggestion"] in detailed["recommendations"]

        heartbeat = await client.post(
            f"/v1/workers/{worker.worker_id}/heartbeat",
            json={"incarnation": worker.incarnation, "running": sorted(worker.running)},
            headers={"X-Worker-Secret": worker.secret},
        )
        assert heartbeat.status_code == 503
        assert heartbeat.headers["Retry-After"]
        assert heartbeat.json()["error"]["code"] == "database_unavailable"

        # Stay down for longer than a lease: without the grace every worker would expire.
        await anyio.sleep(max(0.0, lease_ttl + 1 - (anyio.current_time() - stopped)))
        failed_passes = len(logged(caplog, "reconcile_failed"))
        await anyio.to_thread.run_sync(lambda: pg.start(timeout=60))

        async def ready() -> bool:
            return (await client.get("/ready")).status_code == 200

        await wait_until(ready, timeout=60, what="/ready 200 again")

        async def healthy() -> bool:
            return (await status_of(client, "/health"))[1]["status"] == "healthy"

        await wait_until(healthy, timeout=60, what="/health healthy again")
        await fleet.wait_until(lambda: fleet.runs_exactly(KEYS), timeout=60, what="re-run")
        events = await all_events(client)

    # No busy loop: the reconciler backs off while the database is away (a pass every
    # 0.1 s would have failed about 40 times).
    assert 1 <= failed_passes <= 12
    assert len(logged(caplog, "service_unavailable", "postgresql")) == 1
    assert len(logged(caplog, "service_recovered", "postgresql")) == 1
    kinds = [e["kind"] for e in events]
    assert "worker_expired" not in kinds
    assert "leases_extended" in kinds
    assert fleet.journal.overlaps() == []
    assert fleet.journal.token_regressions() == []
