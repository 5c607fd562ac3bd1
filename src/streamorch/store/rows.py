"""Pages of rows turned into dicts off the event loop.

psycopg's async cursor converts rows where `fetchall()` is awaited: on the event loop.
With `dict_row` that is Python per row, and every json/jsonb value is parsed there too:
for a page of 1,000 workers, streams or events, 15–45 ms of the loop's CPU, during
which no heartbeat is read. Here the loop only takes the rows as tuples (psycopg's
compiled loaders, json left as bytes), CHUNK_ROWS at a time with a turn for other
callbacks in between; the dicts are built and the json parsed in a worker thread, which
hands the interpreter back to the loop every few milliseconds.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.adapt import Loader
from psycopg.rows import tuple_row

JSON_TYPES = ("json", "jsonb")
# Fewer rows are converted inline: a hop to a worker thread would cost more.
INLINE_ROWS = 100
# Rows psycopg loads per step of the loop (a few ms of its compiled code at most).
CHUNK_ROWS = 250


class _JsonText(Loader):
    """A json/jsonb value as its bytes, parsed later (`dicts`)."""

    def load(self, data: Any) -> bytes:
        return bytes(data)


def page_cursor(conn: AsyncConnection[Any]) -> AsyncCursor[tuple[Any, ...]]:
    """A cursor whose rows are tuples with json values as text, for `fetch_dicts`."""
    cur = conn.cursor(row_factory=tuple_row)
    for name in JSON_TYPES:
        cur.adapters.register_loader(name, _JsonText)
    return cur


async def fetch_chunked(cur: AsyncCursor[Any]) -> list[Any]:
    """Every row of the executed query, loaded CHUNK_ROWS at a time with a turn in between.

    For large results read on the loop as they are (a reconcile pass's snapshot of every
    stream): the conversion is psycopg's compiled code, but 20,000 rows at once are tens
    of milliseconds no heartbeat could use.
    """
    rows: list[Any] = []
    while chunk := await cur.fetchmany(CHUNK_ROWS):
        rows += chunk
        if len(chunk) < CHUNK_ROWS:
            break
        await asyncio.sleep(0)  # heartbeats in between
    return rows


async def fetch_dicts(cur: AsyncCursor[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every row of the executed query as a dict, json parsed: built in a worker thread."""
    rows: list[tuple[Any, ...]] = await fetch_chunked(cur)
    if not rows or cur.description is None:
        return []
    names = [c.name for c in cur.description]
    json_oids = {cur.adapters.types[t].oid for t in JSON_TYPES}
    parsed = [i for i, c in enumerate(cur.description) if c.type_code in json_oids]
    if len(rows) <= INLINE_ROWS:
        return dicts(names, parsed, rows)
    return await asyncio.to_thread(dicts, names, parsed, rows)


def dicts(names: list[str], parsed: list[int], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        if parsed:
            values = list(row)
            for i in parsed:
                if values[i] is not None:
                    values[i] = json.loads(values[i])
            row = tuple(values)
        out.append(dict(zip(names, row, strict=True)))
    return out
