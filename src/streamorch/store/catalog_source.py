"""Reading an external stream catalog (STREAMS_SOURCE_DSN): the adapter behind
core/catalog_sync.py's SourceFetch port."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from streamorch.store.retry import wrapped

CONNECT_TIMEOUT_S = 10
QUERY_TIMEOUT_MS = 60_000


async def fetch_rows(dsn: str, query: str) -> list[dict[str, Any]]:
    """The rows of `query` (operator-configured SQL), read-only, on a connection of its own.

    A driver error comes out as StoreError (the driver's error as `__cause__`)."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=False
        )
        async with conn:
            await conn.set_read_only(True)
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SET LOCAL statement_timeout = {QUERY_TIMEOUT_MS}")
            await cur.execute(query)  # operator-configured SQL
            return await cur.fetchall()
    except psycopg.Error as exc:
        raise wrapped(exc) from exc
