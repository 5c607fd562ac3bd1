"""Catalog sync against a real second PostgreSQL database as the source.

The source is a database of the test server with the original system's `streams` table;
the orchestrator is the real app (lifespan, reconciler, bulk path).
"""

from __future__ import annotations

import logging

import psycopg
import pytest

from streamorch.core.catalog_sync import CatalogSync, SyncReport
from streamorch.domain.errors import StoreUnavailable
from streamorch.store.catalog_source import fetch_rows
from tests.asgi import serving
from tests.conftest import FAST_ENGINE
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def source(postgres_server, empty_database):
    """The original system's database: `streams (id, url, status, weight)`."""
    conninfo = postgres_server.conninfo(empty_database)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE streams (id integer PRIMARY KEY, url text NOT NULL, "
            "status text NOT NULL DEFAULT 'active', weight integer)"
        )
    return postgres_server.url(empty_database)


def execute(dsn: str, statement: str, params=None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, params)


@pytest.fixture
async def synced_api(make_settings, postgres_server, database, redis_url, source):

    settings = make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=redis_url,
        STREAMS_SOURCE_DSN=source,
        STREAMS_SOURCE_INTERVAL="0.2",
        STREAMS_SOURCE_QUERY="SELECT id, url, weight FROM streams WHERE status = 'active'",
        **FAST_ENGINE,
    )
    async with serving(settings) as client:
        yield client


async def catalog(api) -> dict[str, dict]:
    response = await api.get("/v1/streams", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return {s["key"]: s for s in response.json()["items"]}


def reports(caplog) -> list[tuple[int, int, int, int]]:
    return [
        tuple(r.counts[k] for k in ("created", "updated", "deleted", "unchanged"))
        for r in caplog.records
        if getattr(r, "action", None) == "catalog_synced"
    ]


async def test_sync_adds_changes_and_removes(synced_api, source, caplog):
    caplog.set_level(logging.INFO, logger="streamorch.core.catalog_sync")
    for i in (1, 2, 3):
        execute(source, "INSERT INTO streams (id, url) VALUES (%s, %s)", (i, f"http://r/{i}"))
    execute(source, "INSERT INTO streams (id, url, status) VALUES (9, 'http://r/9', 'paused')")

    async def keys_are(expected: set[str]) -> bool:
        return set(await catalog(synced_api)) == expected

    await wait_until(lambda: keys_are({"1", "2", "3"}), what="the three active streams")
    assert (3, 0, 0, 0) in reports(caplog)

    execute(source, "UPDATE streams SET url = 'http://r/2-new', weight = 2 WHERE id = 2")
    execute(source, "INSERT INTO streams (id, url) VALUES (4, 'http://r/4')")
    execute(source, "UPDATE streams SET status = 'inactive' WHERE id = 1")
    await wait_until(lambda: keys_are({"2", "3", "4"}), what="1 removed, 4 added")
    await wait_until(lambda: (1, 1, 1, 1) in reports(caplog), what="a report of the change")
    streams = await catalog(synced_api)
    assert (streams["2"]["url"], streams["2"]["weight"]) == ("http://r/2-new", 2)
    # Nothing new in the source: the next rounds change nothing.
    await wait_until(lambda: reports(caplog)[-1] == (0, 0, 0, 3), what="an idle round")


async def test_a_failing_source_keeps_the_catalog(api, make_settings, source, caplog):
    orch = api.app.state.runtime.orchestrator
    execute(source, "INSERT INTO streams (id, url) VALUES (1, 'http://r/1'), (2, 'http://r/2')")

    def sync(**env: str) -> CatalogSync:
        return CatalogSync(make_settings(STREAMS_SOURCE_DSN=source, **env), orch.bulk, fetch_rows)

    assert await sync().run_once() == SyncReport(rows=2, created=2, updated=0, deleted=0)
    assert await sync().run_once() == SyncReport(rows=2, created=0, updated=0, deleted=0)

    caplog.set_level(logging.WARNING, logger="streamorch.core.catalog_sync")
    failing = [
        # Unreachable: a database that does not exist on the same server.
        make_settings(STREAMS_SOURCE_DSN=source.rsplit("/", 1)[0] + "/no_such_database"),
        # A query that fails.
        make_settings(STREAMS_SOURCE_DSN=source, STREAMS_SOURCE_QUERY="SELECT id FROM nowhere"),
        # Rows without a url.
        make_settings(STREAMS_SOURCE_DSN=source, STREAMS_SOURCE_QUERY="SELECT id FROM streams"),
        # No rows: a replace would empty the catalog.
        make_settings(
            STREAMS_SOURCE_DSN=source,
            STREAMS_SOURCE_QUERY="SELECT id, url FROM streams WHERE false",
        ),
    ]
    for settings in failing:
        assert await CatalogSync(settings, orch.bulk, fetch_rows).run_once() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert "STREAMS_SOURCE_DSN" in warnings[0]
    assert "no url" in warnings[2]
    assert "STREAMS_SOURCE_ALLOW_EMPTY" in warnings[3]
    assert set(await catalog(api)) == {"1", "2"}

    # Explicitly allowed, an empty source empties the catalog.
    empty = sync(
        STREAMS_SOURCE_QUERY="SELECT id, url FROM streams WHERE false",
        STREAMS_SOURCE_ALLOW_EMPTY="true",
    )
    assert await empty.run_once() == SyncReport(rows=0, created=0, updated=0, deleted=2)
    assert await catalog(api) == {}


async def test_upsert_mode_never_deletes(api, make_settings, source):
    orch = api.app.state.runtime.orchestrator
    response = await api.put("/v1/streams/radio-x", json={"url": "http://r/x"})
    assert response.status_code == 201
    execute(source, "INSERT INTO streams (id, url) VALUES (7, 'http://r/7')")
    sync = CatalogSync(
        make_settings(STREAMS_SOURCE_DSN=source, STREAMS_SOURCE_MODE="upsert"),
        orch.bulk,
        fetch_rows,
    )
    assert await sync.run_once() == SyncReport(rows=1, created=1, updated=0, deleted=0)
    assert set(await catalog(api)) == {"7", "radio-x"}


async def test_a_failing_catalog_store_is_told_apart_from_a_failing_source(
    make_settings, source, caplog
):
    async def broken_store(specs, mode):
        raise StoreUnavailable("OperationalError: connection to the orchestrator's database lost")

    execute(source, "INSERT INTO streams (id, url) VALUES (1, 'http://r/1')")
    caplog.set_level(logging.WARNING, logger="streamorch.core.catalog_sync")
    sync = CatalogSync(make_settings(STREAMS_SOURCE_DSN=source), broken_store, fetch_rows)
    assert await sync.run_once() is None
    assert "the catalog could not be written" in sync.last_error
    assert "GET /health" in caplog.records[-1].getMessage()
