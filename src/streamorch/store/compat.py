"""PostgreSQL side of the original-instance protocols (core/compat.py).

Only what the engine store has no call for: the heartbeat of an instance that names
no stream, pulls that take unassigned streams and record what was handed to each
registration, releases on the instance's word, and the original views. Every write
is one transaction, like the engine store's (I7); queries live in `sql/compat.sql`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from streamorch.domain.records import Event
from streamorch.store import queries
from streamorch.store.database import DatabaseManager
from streamorch.store.passes import RECONCILE_LOCK_KEY
from streamorch.store.queries import sql as engine_sql
from streamorch.store.retry import driver_errors_wrapped, retry_conflicts
from streamorch.store.rows import fetch_dicts, page_cursor


def sql(name: str) -> str:
    return queries.sql(name, "compat")


async def _events(conn: psycopg.AsyncConnection, events: list[Event]) -> None:
    if events:
        await conn.execute(
            engine_sql("insert_events"),
            {
                "kinds": [e.kind for e in events],
                "streams": [e.stream for e in events],
                "workers": [str(e.worker) for e in events],
                "reasons": [e.reason for e in events],
                "details": [json.dumps(e.details) for e in events],
            },
        )


@driver_errors_wrapped
class CompatStore:
    def __init__(self, db: DatabaseManager) -> None:
        self.db = db

    async def instance(self, name: str) -> dict[str, Any] | None:
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("instance"), {"name": name})
            return await cur.fetchone()

    @retry_conflicts
    async def mark_original(
        self, worker_id: uuid.UUID, *, generation: str, metrics: dict[str, Any]
    ) -> list[str]:
        """A fresh registration: its generation and metrics, no hand-outs yet.

        Returns the streams that were being stopped there (deleted or disabled): the new
        process does not run them, so they are forgotten.
        """
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                sql("mark_original"),
                {"id": worker_id, "generation": generation, "metrics": Jsonb(metrics)},
            )
            dropped = [k for (k,) in await cur.fetchall()]
            if dropped:
                await _events(
                    conn, [Event("stopped", k, worker_id, "reregistered") for k in dropped]
                )
                await conn.execute(engine_sql("bump_generation"))
            return dropped

    async def beat(
        self, name: str, *, metrics: dict[str, Any], generation: str | None, ttl: float
    ) -> bool:
        """Renew a live instance's lease; False if it is unknown or its lease ran out."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                sql("beat"),
                {"name": name, "metrics": Jsonb(metrics), "generation": generation, "ttl": ttl},
            )
            return await cur.fetchone() is not None

    @retry_conflicts
    async def recover(self, worker_id: uuid.UUID) -> tuple[list[str], list[str]]:
        """After a revival: take back what the registration was handed and nobody took.

        Returns (recovered, lost): lost streams run elsewhere (or were deleted) now.
        """
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (RECONCILE_LOCK_KEY,))
            cur = await conn.execute(sql("recover"), {"id": worker_id})
            recovered = await cur.fetchall()
            cur = await conn.execute(sql("handed"), {"id": worker_id})
            handed = [k for (k,) in await cur.fetchall()]
            back = {k for k, _ in recovered}
            lost = [k for k in handed if k not in back]
            await conn.execute(sql("sync_running"), {"id": worker_id})
            details = {"recovered": sorted(back), "lost": lost}
            await _events(
                conn,
                [Event("assigned", k, worker_id, "revived", {"token": t}) for k, t in recovered]
                + [Event("instance_revived", None, worker_id, "heartbeat_after_expiry", details)],
            )
            return sorted(back), lost

    async def pool_exists(self) -> bool:
        async with self.db.connection() as conn:
            cur = await conn.execute(sql("pool_exists"))
            row = await cur.fetchone()
        assert row is not None, "SELECT EXISTS returns one row"
        return bool(row[0])

    @retry_conflicts
    async def hand_out(
        self, worker_id: uuid.UUID, *, limit: int, from_pool: bool, once: bool = False
    ) -> tuple[list[str], dict[str, Any] | None]:
        """Up to `limit` streams new to the instance's registration.

        First what it owns and was not handed (its own streams from before a restart),
        then, with `from_pool`, unassigned streams it has room for, taken under the
        reconcile lock (a pass may be granting the same streams). With `once` (an
        instance that never pulls again), what it owned and does not get now is freed.
        Returns the keys and
        the instance's state (None: unknown), or no keys while it is not live.
        """
        async with self.db.connection() as conn, conn.transaction():
            if from_pool:
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (RECONCILE_LOCK_KEY,))
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("lock_instance"), {"id": worker_id})
            state = await cur.fetchone()
            if state is None or state["status"] != "active":
                return [], state
            await cur.execute(sql("reserved"), {"id": worker_id, "limit": limit})
            keys = [r["stream_key"] for r in await cur.fetchall()]
            room = state["capacity"] - state["load"]
            taken: list[dict[str, Any]] = []
            if from_pool and len(keys) < limit and room > 0:
                await cur.execute(
                    sql("pool"),
                    {
                        "id": worker_id,
                        "labels": Jsonb(state["labels"]),
                        "limit": limit - len(keys),
                        "room": room,
                    },
                )
                picked = [r["key"] for r in await cur.fetchall()]
                if picked:
                    await cur.execute(sql("take"), {"id": worker_id, "keys": picked})
                    taken = await cur.fetchall()
                    keys += [r["stream_key"] for r in taken]
            if keys:
                await conn.execute(sql("record_handouts"), {"id": worker_id, "keys": keys})
            unclaimed: list[str] = []
            if once:
                await cur.execute(sql("unclaimed"), {"id": worker_id})
                unclaimed = [r["stream_key"] for r in await cur.fetchall()]
                await _events(
                    conn, [Event("stopped", k, worker_id, "unclaimed") for k in unclaimed]
                )
            if taken or unclaimed:
                await conn.execute(sql("sync_running"), {"id": worker_id})
                await _events(
                    conn,
                    [
                        Event(
                            "assigned", r["stream_key"], worker_id, "pulled", {"token": r["token"]}
                        )
                        for r in taken
                    ],
                )
            if unclaimed:
                await conn.execute(engine_sql("bump_generation"))  # last: the engine's lock order
            state["room"] = room
            state["unclaimed"] = unclaimed
            return keys, state

    @retry_conflicts
    async def release(self, worker_id: uuid.UUID, keys: list[str]) -> list[str]:
        """The instance stopped `keys`: what it owned is free for others. Returns the keys it
        owned or was handed (both now forgotten)."""
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(sql("release"), {"id": worker_id, "keys": keys})
            owned = [k for (k,) in await cur.fetchall()]
            cur = await conn.execute(sql("forget_handouts"), {"id": worker_id, "keys": keys})
            handed = [k for (k,) in await cur.fetchall()]
            if owned:
                await conn.execute(sql("sync_running"), {"id": worker_id})
                await _events(conn, [Event("stopped", k, worker_id, "released") for k in owned])
                await conn.execute(engine_sql("bump_generation"))  # last: the engine's lock order
            return sorted(set(owned) | set(handed))

    # The original views are unpaged (their clients read the whole fleet in one answer):
    # rows are loaded as tuples in steps and made dicts in a worker thread (rows.py).

    async def instances(self, name: str | None = None) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            cur = page_cursor(conn)
            await cur.execute(sql("instances"), {"name": name})
            return await fetch_dicts(cur)

    async def assignments(self) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            cur = page_cursor(conn)
            await cur.execute(sql("assignments"))
            return await fetch_dicts(cur)

    async def urls(self, keys: list[str]) -> dict[str, str]:
        async with self.db.connection() as conn:
            cur = await conn.execute(sql("stream_urls"), {"keys": keys})
            return dict(await cur.fetchall())
