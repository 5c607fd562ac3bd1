"""Real PostgreSQL and Redis for the whole suite.

One embedded PostgreSQL and one embedded Valkey per test session (or the
servers in DATABASE_URL / REDIS_URL). The schema is built once into a template
database; each test that needs a database gets a fresh copy
(`CREATE DATABASE … TEMPLATE`), so tests are isolated and fast.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from streamorch.backing.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey
from streamorch.config import Settings, load_settings

TEMPLATE_DB = "streamorch_test_template"


@dataclass(frozen=True)
class PostgresServer:
    admin_conninfo: str  # may create databases
    host: str
    port: int

    def conninfo(self, dbname: str) -> str:
        return make_conninfo(self.admin_conninfo, dbname=dbname)

    def url(self, dbname: str) -> str:
        parts = conninfo_to_dict(self.conninfo(dbname))
        user, password = parts.get("user", ""), parts.get("password", "")
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}{self.host}:{self.port}/{dbname}"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def services_root() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is private (0700), and under root the
    # embedded PostgreSQL runs as an unprivileged user that must enter it.
    root = Path(tempfile.mkdtemp(prefix="streamorch-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(services_root: Path) -> Iterator[PostgresServer]:
    external = os.environ.get("DATABASE_URL")
    if external:
        parts = conninfo_to_dict(external)
        yield PostgresServer(
            external, str(parts.get("host", "localhost")), int(parts.get("port", 5432))
        )
        return
    pg = EmbeddedPostgres(DataDir(services_root / "pg"), durable=False)
    endpoint = pg.start(timeout=60)
    assert endpoint.port is not None
    try:
        yield PostgresServer(pg.superuser_conninfo(endpoint.port), "127.0.0.1", endpoint.port)
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def redis_url(services_root: Path) -> Iterator[str]:
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    valkey = EmbeddedValkey(DataDir(services_root / "valkey"))
    endpoint = valkey.start()
    try:
        yield f"redis://:{valkey.password}@127.0.0.1:{endpoint.port}/0"
    finally:
        valkey.stop()


@pytest.fixture(scope="session")
def template_database(postgres_server: PostgresServer) -> str:
    """A database with every migration applied, copied for each test."""
    import anyio

    from streamorch.store import migrations

    _recreate(postgres_server, TEMPLATE_DB)

    async def build() -> None:
        conn = await psycopg.AsyncConnection.connect(
            postgres_server.conninfo(TEMPLATE_DB), autocommit=True
        )
        async with conn:
            await migrations.migrate(conn)

    anyio.run(build)
    return TEMPLATE_DB


def _recreate(server: PostgresServer, name: str, template: str | None = None) -> None:
    with psycopg.connect(server.admin_conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(statement)


def drop_database(server: PostgresServer, name: str) -> None:
    with psycopg.connect(server.admin_conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def empty_database(postgres_server: PostgresServer) -> Iterator[str]:
    """The name of a fresh database with no schema at all."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    _recreate(postgres_server, name)
    yield name
    drop_database(postgres_server, name)


@pytest.fixture
def database(postgres_server: PostgresServer, template_database: str) -> Iterator[str]:
    """The name of a fresh, fully migrated database."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    _recreate(postgres_server, name, template=template_database)
    yield name
    drop_database(postgres_server, name)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory an embedded server may use, also when the tests run as root."""
    root = Path(tempfile.mkdtemp(prefix="streamorch-data-"))
    root.chmod(0o755)
    yield root / "data"
    for server in (
        EmbeddedValkey(DataDir(root / "data")),
        EmbeddedPostgres(DataDir(root / "data")),
    ):
        if server.status().running:  # a test that failed half-way must not leak servers
            server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_settings(data_dir: Path):
    """Settings from an environment mapping, isolated from the process environment."""

    def build(**env: str) -> Settings:
        base = {"STREAMORCH_DATA_DIR": str(data_dir)}
        base.update(env)
        return load_settings(base)

    return build


@pytest.fixture
def settings(
    make_settings, postgres_server: PostgresServer, database: str, redis_url: str
) -> Settings:
    """Settings pointing at this test's database and the session's Redis."""
    return make_settings(DATABASE_URL=postgres_server.url(database), REDIS_URL=redis_url)


FAST_ENGINE = {
    "HEARTBEAT_INTERVAL": "0.3",
    "LEASE_TTL": "1.5",
    "RECONCILE_INTERVAL": "0.1",
}


@pytest.fixture
def engine_settings(
    make_settings, postgres_server: PostgresServer, database: str, redis_url: str
) -> Settings:
    """Settings with short leases and intervals, so engine tests run in seconds."""
    return make_settings(
        DATABASE_URL=postgres_server.url(database), REDIS_URL=redis_url, **FAST_ENGINE
    )


@pytest.fixture
async def api(engine_settings: Settings):
    """An httpx client on the real app (lifespan run: pool, reconciler, notifier)."""
    from tests.asgi import serving

    async with serving(engine_settings) as client:
        yield client
