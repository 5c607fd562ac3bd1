"""PostgreSQL side of the original-instance protocol (api/routes/compat.py).

Only what the engine store has no call for: hand-outs (streams an instance pulled
but has not reported yet) and a release that revokes streams on the instance's own
word. Every write is one transaction, like the engine store's (I7); queries live in
`sql/compat.sql`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from typing import Any

from psycopg.rows import dict_row

from streamorch.store.database import DatabaseManager
from streamorch.store.queries import sql as engine_sql
from streamorch.store.retry import retry_conflicts

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)

# Chooses a target worker per released stream: (streams, candidates) -> {key: worker id}.
TargetChooser = Callable[[Sequence[dict[str, Any]], Sequence[dict[str, Any]]], dict[str, str]]


@cache
def _queries() -> dict[str, str]:
    text = (resources.files("streamorch.store") / "sql" / "compat.sql").read_text()
    parts = _HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def sql(name: str) -> str:
    return _queries()[name]


class CompatStore:
    def __init__(self, db: DatabaseManager) -> None:
        self.db = db

    async def instance(self, name: str) -> dict[str, Any] | None:
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("instance"), {"name": name})
            return await cur.fetchone()

    async def clear_handouts(self, worker_id: uuid.UUID) -> None:
        async with self.db.connection() as conn:
            await conn.execute(sql("clear_handouts"), {"id": worker_id})

    async def settle_handouts(
        self, worker_id: uuid.UUID, running: list[str], *, ttl: float
    ) -> list[str]:
        """Forget hand-outs now reported (or too old); the rest count as running."""
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                sql("settle_handouts"), {"id": worker_id, "running": running, "ttl": ttl}
            )
            return [k for (k,) in await cur.fetchall()]

    @retry_conflicts
    async def hand_out(
        self, worker_id: uuid.UUID, *, limit: int, ttl: float
    ) -> tuple[list[str], dict[str, Any] | None]:
        """Up to `limit` streams granted to the worker that it neither runs nor was handed.

        Returns the keys and the worker's (status, lease_valid), or None if it is unknown.
        """
        async with self.db.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            # The row lock serialises concurrent pulls of one instance: no double hand-out.
            await cur.execute(sql("lock_instance"), {"id": worker_id})
            state = await cur.fetchone()
            if state is None or state["status"] != "active" or not state["lease_valid"]:
                return [], state
            await cur.execute(sql("hand_out"), {"id": worker_id, "limit": limit, "ttl": ttl})
            keys = [r["stream_key"] for r in await cur.fetchall()]
            if keys:
                await cur.execute(sql("add_running"), {"id": worker_id, "keys": keys})
            return keys, state

    async def restore_handouts(self, worker_id: uuid.UUID, *, ttl: float) -> None:
        """Count hand-outs made while a heartbeat was in flight as running (it overwrote them)."""
        async with self.db.connection() as conn:
            await conn.execute(sql("restore_handouts"), {"id": worker_id, "ttl": ttl})

    @retry_conflicts
    async def release(
        self, worker_id: uuid.UUID, keys: list[str], choose: TargetChooser
    ) -> tuple[list[str], set[str]]:
        """Revoke `keys` on the worker's word that it stopped them.

        Each becomes a move (towards the target `choose` picks, if any) that finishes
        at the worker's next report without it, like any other revoke (I1). Returns the
        keys it owned and the ids of workers whose desired set changed.
        """
        async with self.db.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("lock_instance"), {"id": worker_id})
            if await cur.fetchone() is None:
                return [], set()
            await cur.execute(sql("owned"), {"id": worker_id, "keys": keys})
            owned = await cur.fetchall()
            granted = [r for r in owned if r["state"] == "granted"]
            touched: set[str] = set()
            if granted:
                await cur.execute(sql("release_targets"), {"id": worker_id})
                targets = choose(granted, await cur.fetchall())
                moved = [r["stream_key"] for r in granted]
                await cur.execute(
                    sql("release"),
                    {"id": worker_id, "keys": moved, "targets": [targets.get(k) for k in moved]},
                )
                released = await cur.fetchall()
                await conn.execute(
                    engine_sql("insert_events"),
                    {
                        "kinds": ["revoked"] * len(released),
                        "streams": [r["stream_key"] for r in released],
                        "workers": [worker_id] * len(released),
                        "reasons": ["released"] * len(released),
                        "details": [
                            json.dumps({"target": str(r["target_id"]) if r["target_id"] else None})
                            for r in released
                        ],
                    },
                )
                touched = {str(worker_id)}
                await conn.execute(engine_sql("bump_versions"), {"ids": [str(worker_id)]})
                await conn.execute(engine_sql("notify"), {"payload": str(worker_id)})
                await conn.execute(engine_sql("stamp_revokes"), {"keys": moved})
            await conn.execute(
                sql("forget_handouts"), {"id": worker_id, "keys": [r["stream_key"] for r in owned]}
            )
            if granted:
                await conn.execute(engine_sql("bump_generation"))  # last: the engine's lock order
        return [r["stream_key"] for r in owned], touched

    async def instances(self) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("instances"))
            return await cur.fetchall()

    async def owners(self) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("owners"))
            return await cur.fetchall()
