"""The store's side of health, doctor and start-up: their SQL, behind plain functions.

The queries are in sql/health.sql (by `-- name: …` header). Driver errors leave here as
`StoreError` (the driver's exception is its `__cause__`); a standby refusing the health
probe's write is `ReadOnly`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from streamorch.domain.errors import StoreError
from streamorch.store import migrations, queries
from streamorch.store.database import DatabaseManager


class ReadOnly(StoreError):
    """PostgreSQL accepts no writes: a standby, or default_transaction_read_only is on."""


def query(name: str) -> str:
    return queries.sql(name, "health")


async def _value(cur: psycopg.AsyncCursor[Any]) -> Any:
    """The first column of a statement that always returns one row."""
    row = await cur.fetchone()
    if row is None:
        raise StoreError("a statement that returns one row returned none")
    return row[0]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _wrapped(exc: psycopg.Error) -> StoreError:
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return ReadOnly(str(exc))
    return StoreError(str(exc) or type(exc).__name__)


async def deep_check(db: DatabaseManager, timeout: float, details: dict[str, Any]) -> float:
    """Version, schema, last cluster pass, and a rolled-back write + read; fills `details`.

    Returns the latency of the first round trip in ms.
    """
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout), db.pool.connection(timeout=timeout) as conn:
            cur = await conn.execute("SELECT current_setting('server_version')")
            details["server_version"] = await _value(cur)
            latency = _ms(started)
            cur = await conn.execute(query("schema_version"))
            details["schema_version"] = int(await _value(cur))
            if details["schema_version"]:
                cur = await conn.execute(query("cluster_pass"))
                row = await cur.fetchone()
                if row is not None:
                    details["last_pass_at"] = row[0]
                    details["last_pass_age_s"] = None if row[1] is None else round(row[1], 3)
            ops = time.perf_counter()
            async with conn.transaction(force_rollback=True):
                cur = await conn.execute(query("probe_write"))
                probe_id = await _value(cur)
                cur = await conn.execute(query("probe_read"), {"id": probe_id})
                read = await cur.fetchone()
            if read is None or read[0] != "health_probe":
                raise StoreError("the operations test did not read back what it wrote")
            details["operations"] = {"write_read": "ok", "latency_ms": _ms(ops)}
    except psycopg.Error as exc:
        raise _wrapped(exc) from exc
    return latency


async def schema_version(db: DatabaseManager, timeout: float) -> int:
    """The schema's version through the pool, bounded by `timeout`."""
    try:
        async with asyncio.timeout(timeout), db.pool.connection(timeout=timeout) as conn:
            cur = await conn.execute(query("schema_version"))
            return int(await _value(cur))
    except psycopg.Error as exc:
        raise _wrapped(exc) from exc


async def schema_version_at(conninfo: str, timeout: float | None = None) -> int:
    """The schema's version on a connection of its own (before any pool exists)."""
    try:
        async with asyncio.timeout(timeout):
            kwargs: dict[str, Any] = {"autocommit": True}
            if timeout is not None:
                kwargs["connect_timeout"] = max(2, round(timeout))
            conn = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
            async with conn:
                return await migrations.current_version(conn)
    except psycopg.Error as exc:
        raise _wrapped(exc) from exc


async def migrate_at(conninfo: str, lock_timeout_s: float = 60.0) -> list[migrations.Migration]:
    """Apply pending migrations on a connection of its own (safe from several replicas)."""
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        async with conn:
            return await migrations.migrate(conn, lock_timeout_s=lock_timeout_s)
    except psycopg.Error as exc:
        raise _wrapped(exc) from exc


@dataclass(frozen=True)
class Internals:
    """The rows `/health/detailed` lists: workers, the oldest moves, the last failovers."""

    workers: list[dict[str, Any]]
    moves: list[dict[str, Any]]
    failovers: list[dict[str, Any]]


async def internals(db: DatabaseManager, limit: int, failovers: int = 10) -> Internals:
    try:
        async with db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query("workers_overview"), {"limit": limit})
            workers = await cur.fetchall()
            await cur.execute(query("moves_in_flight"), {"limit": limit})
            moves = await cur.fetchall()
            await cur.execute(query("last_failovers"), {"limit": failovers})
            last = await cur.fetchall()
    except psycopg.Error as exc:
        raise _wrapped(exc) from exc
    return Internals(workers, moves, last)
