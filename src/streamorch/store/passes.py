"""The steps of a reconcile pass on PostgreSQL, each one statement in the pass's transaction.

What runs when is decided in core (core/engine.py); this module only executes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import psycopg

from streamorch.domain.collector import paused as paused_gc
from streamorch.domain.models import EMPTY, Grant, Holding, Revoke, Snapshot, StreamView, WorkerView
from streamorch.domain.records import Event
from streamorch.store import writes
from streamorch.store.database import DatabaseManager
from streamorch.store.queries import sql
from streamorch.store.retry import driver_errors
from streamorch.store.rows import fetch_chunked

# The advisory lock that serialises reconcile passes across replicas.
RECONCILE_LOCK_KEY = 0x52454331  # "REC1"


@contextlib.asynccontextmanager
async def pass_tx(db: DatabaseManager, offload: writes.Offload) -> AsyncIterator[PostgresPassTx]:
    """One pass's transaction (unprepared: its arrays may hold 100,000 keys). Driver
    errors come out as StoreError, conflicts as TransactionConflict."""
    async with driver_errors(), db.connection(prepared=False) as conn, conn.transaction():
        yield PostgresPassTx(conn, offload)


class PostgresPassTx:
    def __init__(self, conn: psycopg.AsyncConnection[Any], offload: writes.Offload) -> None:
        self.conn = conn
        self.offload = offload

    async def _one(self, name: str, params: dict[str, Any] | None = None) -> Any:
        cur = await self.conn.execute(sql(name), params)
        row = await cur.fetchone()
        return None if row is None else row[0]

    async def _all(self, name: str, params: dict[str, Any] | None = None) -> list[Any]:
        cur = await self.conn.execute(sql(name), params)
        return await fetch_chunked(cur)

    async def try_lock(self) -> bool:
        return bool(await self._one("reconcile_lock", {"key": RECONCILE_LOCK_KEY}))

    async def pass_gap(self) -> float | None:
        gap = await self._one("pass_gap")
        return None if gap is None else float(gap)

    async def grace_leases(self, ttl: float) -> int:
        return len(await self._all("grace_leases", {"ttl": ttl}))

    async def expire(
        self, grace: float, alive: Sequence[Any]
    ) -> tuple[list[Any], list[tuple[str, Any]]]:
        rows = await self._all("expire_workers", {"grace": grace, "alive": alive})
        expired = [w for (w,) in rows]
        if not expired:
            return [], []
        released = await self._all("release_workers", {"ids": expired})
        await self.conn.execute(sql("untarget"), {"ids": expired})
        return expired, released

    async def finish_moves(self) -> list[tuple[str, Any, Any, str]]:
        return await self._all("finish_moves")

    async def drained_workers(self, ids: Sequence[str]) -> list[Any]:
        return [w for (w,) in await self._all("drained_workers", {"ids": list(ids)})]

    async def generation(self) -> int:
        return int(await self._one("generation"))

    async def snapshot(self) -> Snapshot:
        return await read_snapshot(self.conn, self.offload)

    async def recent_join_ages(self, horizon: float) -> list[float]:
        return [age for (age,) in await self._all("recent_joins", {"horizon": horizon})]

    async def apply_revokes(self, revokes: Sequence[Revoke]) -> list[tuple[str, Any, Any, str]]:
        params = {
            "keys": [r.stream for r in revokes],
            "targets": [r.target for r in revokes],
            "reasons": [r.reason for r in revokes],
        }
        return await self._all("apply_revokes", params)

    async def insert_grants(self, grants: Sequence[Grant]) -> list[tuple[str, str, Any]]:
        params = {
            "keys": [g.stream for g in grants],
            "workers": [g.worker for g in grants],
            "reasons": [g.reason for g in grants],
        }
        return await self._all("insert_grants", params)

    async def write_events(self, events: Sequence[Event]) -> None:
        await writes.events(self.conn, events, self.offload)

    async def touch(self, worker_ids: Iterable[Any]) -> set[str]:
        return await writes.touch(self.conn, worker_ids)

    async def stamp_revokes(self, keys: Sequence[str]) -> None:
        await writes.stamp_revokes(self.conn, keys)

    async def next_expiry(self, grace: float, alive: Sequence[Any]) -> float | None:
        left = await self._one("next_expiry", {"grace": grace, "alive": alive})
        return None if left is None else float(left)

    async def note_pass(self) -> None:
        await self.conn.execute(sql("note_pass"))


async def read_snapshot(conn: psycopg.AsyncConnection[Any], offload: writes.Offload) -> Snapshot:
    """Everything placement needs, read on `conn`; built through `offload`."""
    cur = await conn.execute(sql("live_workers"))
    worker_rows = await fetch_chunked(cur)
    cur = await conn.execute(sql("placement_rows"))
    stream_rows = await fetch_chunked(cur)
    snapshot: Snapshot = await offload(build_snapshot, worker_rows, stream_rows)
    return snapshot


def build_snapshot(worker_rows: list[Any], rows: list[Any]) -> Snapshot:
    """A `Snapshot` from the rows of `live_workers` and `placement_rows`.

    Plain tuples, ids read as text and no JSON parsing of empty `requires`: at
    100,000 streams, dict rows, uuid.UUID objects turned back into str and
    json.loads('{}') per row took ~1.5 s of a ~2.5 s snapshot
    (bench/reconcile.py --breakdown).
    """
    workers = {
        wid: WorkerView(
            id=wid,
            capacity=capacity,
            labels=labels,
            draining=status == "draining",
            name=name,
            pinned=pinned,
        )
        for wid, name, capacity, labels, status, pinned in worker_rows
    }
    streams: dict[str, StreamView] = {}
    assignments: dict[str, Holding] = {}
    new = tuple.__new__  # what the named tuples' __new__ calls, minus a Python frame
    with paused_gc():
        for key, weight, requires, enabled, worker, state, target in rows:
            if weight is not None:
                streams[key] = new(StreamView, (key, weight, requires or EMPTY, enabled))
            if worker is not None:
                assignments[key] = new(Holding, (key, worker, state, target))
    return Snapshot(workers, streams, assignments)
