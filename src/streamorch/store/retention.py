"""PostgreSQL side of retention: forget departed workers, delete old events.

Every call is one short transaction over at most `limit` rows, so neither the deletes
nor the vacuum after them hold up heartbeats or reconcile passes; core/retention.py
calls them in a loop with pauses between batches. A batch first takes a
transaction-scoped advisory lock and does nothing (returns None) when another replica
holds it. Queries live in `sql/retention.sql`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from streamorch.domain.errors import Conflict, NotFound
from streamorch.domain.records import Event
from streamorch.store import queries
from streamorch.store.database import DatabaseManager
from streamorch.store.queries import sql as engine_sql
from streamorch.store.retry import driver_errors_wrapped, retry_conflicts

# The advisory lock of retention batches ("RET1"); reconcile passes have their own.
RETENTION_LOCK_KEY = 0x52455431


def sql(name: str) -> str:
    return queries.sql(name, "retention")


async def write_events(conn: psycopg.AsyncConnection, events: Sequence[Event]) -> None:
    """Append `events` in the caller's transaction (the engine store's `insert_events`)."""
    await conn.execute(
        engine_sql("insert_events"),
        {
            "kinds": [e.kind for e in events],
            "streams": [e.stream for e in events],
            "workers": [None if e.worker is None else str(e.worker) for e in events],
            "reasons": [e.reason for e in events],
            "details": [json.dumps(e.details) for e in events],
        },
    )


@driver_errors_wrapped
class RetentionStore:
    def __init__(self, db: DatabaseManager) -> None:
        self.db = db

    async def _locked(self, conn: psycopg.AsyncConnection) -> bool:
        cur = await conn.execute(sql("retention_lock"), {"key": RETENTION_LOCK_KEY})
        row = await cur.fetchone()
        return bool(row and row[0])

    @retry_conflicts
    async def forget_departed(self, *, older_than_s: float, limit: int) -> list[str] | None:
        """Forget up to `limit` workers that departed more than `older_than_s` ago.

        Returns their names, or None when another replica is doing it.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        async with self.db.connection(prepared=False) as conn, conn.transaction():
            if not await self._locked(conn):
                return None
            cur = await conn.execute(sql("departed_before"), {"cutoff": cutoff, "limit": limit})
            ids = [i for (i,) in await cur.fetchall()]
            names = [name for _, name in await self._forget(conn, ids)]
            if names:
                # One event per batch: a catch-up on months of history forgets thousands.
                details = {"count": len(names), "older_than_s": older_than_s}
                await write_events(
                    conn, [Event("workers_forgotten", None, None, "retention", details)]
                )
            return names

    @retry_conflicts
    async def forget(self, worker_id: uuid.UUID) -> str:
        """Forget one departed worker now; its events keep its name. Returns the name."""
        async with self.db.connection(prepared=False) as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("SELECT name, status FROM workers WHERE id = %s", (worker_id,))
            row = await cur.fetchone()
            if row is None:
                raise NotFound("worker", str(worker_id))
            if row["status"] not in ("expired", "left"):
                raise Conflict(
                    f"worker {row['name']!r} is {row['status']}: only a departed (left or "
                    "expired) worker can be forgotten; remove it first (streamorch workers "
                    "drain, then DELETE /v1/workers/{id}) or wait for its lease to expire",
                    code="worker_not_departed",
                    status=row["status"],
                )
            # Written while the row exists, so the event carries the name too; rolled
            # back with the rest if the worker cannot be forgotten after all.
            event = Event("worker_forgotten", None, worker_id, "requested", {"name": row["name"]})
            await write_events(conn, [event])
            if not await self._forget(conn, [worker_id]):  # still named in a move
                raise Conflict(
                    f"worker {row['name']!r} still has streams in a move; retry in a moment",
                    code="worker_not_departed",
                    status=row["status"],
                )
            return str(row["name"])

    async def _forget(
        self, conn: psycopg.AsyncConnection, ids: Sequence[Any]
    ) -> list[tuple[Any, str]]:
        if not ids:
            return []
        cur = await conn.execute(sql("lock_departed"), {"ids": list(ids)})
        locked = [(i, n) for i, n in await cur.fetchall()]
        if not locked:
            return []
        locked_ids = [i for i, _ in locked]
        await conn.execute(sql("name_events"), {"ids": locked_ids})
        await conn.execute(sql("forget_handouts"), {"ids": locked_ids})
        await conn.execute(sql("forget_workers"), {"ids": locked_ids})
        return locked

    @retry_conflicts
    async def purge_events(
        self, *, max_age_s: float | None, max_count: int | None, limit: int
    ) -> int | None:
        """Delete up to `limit` of the oldest events past either bound; None when another
        replica is doing it. Fewer than `limit` deleted: nothing more is due."""
        cutoff = None if max_age_s is None else datetime.now(UTC) - timedelta(seconds=max_age_s)
        async with self.db.connection(prepared=False) as conn, conn.transaction():
            if not await self._locked(conn):
                return None
            cur = await conn.execute(
                sql("purge_events"), {"cutoff": cutoff, "keep": max_count, "limit": limit}
            )
            return cur.rowcount

    async def table_sizes(self) -> dict[str, dict[str, int]]:
        """Rows (the planner's estimate) and bytes on disk of `events` and `workers`."""
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("table_sizes"))
            return {
                r["name"]: {"rows": r["rows"], "bytes": r["bytes"]} for r in await cur.fetchall()
            }
