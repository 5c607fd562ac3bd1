"""One suite, two stores: every contract test runs against the in-memory store and
against PostgreSQL, so the fake the unit tests rely on stays honest."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from streamorch.store.memory import MemoryStore


class Harness:
    """What a test needs besides the store's own methods: moving time under it."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def lease_ended(self, worker_id: uuid.UUID, ago_s: float) -> None:
        raise NotImplementedError

    async def last_pass(self, ago_s: float) -> None:
        raise NotImplementedError


class MemoryHarness(Harness):
    async def lease_ended(self, worker_id: uuid.UUID, ago_s: float) -> None:
        self.store.state.workers[worker_id].lease_expires_at = self.store.clock() - ago_s

    async def last_pass(self, ago_s: float) -> None:
        self.store.state.last_pass_at = self.store.clock() - ago_s


class PostgresHarness(Harness):
    def __init__(self, store: Any, conninfo: str) -> None:
        super().__init__(store)
        self.conninfo = conninfo

    async def _sql(self, statement: str, params: tuple[Any, ...]) -> None:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            await conn.execute(statement, params)

    async def lease_ended(self, worker_id: uuid.UUID, ago_s: float) -> None:
        await self._sql(
            "UPDATE workers SET lease_expires_at = now() - make_interval(secs => %s) WHERE id = %s",
            (ago_s, worker_id),
        )

    async def last_pass(self, ago_s: float) -> None:
        await self._sql(
            "UPDATE cluster SET last_pass_at = now() - make_interval(secs => %s)", (ago_s,)
        )


@pytest.fixture(params=["memory", "postgres"])
def backend(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """Which store; for PostgreSQL, this test's settings and database (resolved here, in a
    plain fixture: building the template database runs its own event loop)."""
    if request.param == "memory":
        return "memory", None
    settings = request.getfixturevalue("settings")
    server = request.getfixturevalue("postgres_server")
    return "postgres", (settings, server.conninfo(request.getfixturevalue("database")))


@pytest.fixture
async def harness(backend: tuple[str, Any]) -> AsyncIterator[Harness]:
    kind, found = backend
    if kind == "memory":
        yield MemoryHarness(MemoryStore())
        return
    from streamorch.backing import endpoints
    from streamorch.store.database import DatabaseManager
    from streamorch.store.postgres import EngineStore

    settings, conninfo = found
    async with DatabaseManager(endpoints.postgres_target(settings), settings) as db:
        yield PostgresHarness(EngineStore(db), conninfo)


@pytest.fixture
def store(harness: Harness) -> Any:
    return harness.store
