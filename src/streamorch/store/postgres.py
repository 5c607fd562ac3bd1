"""The engine's PostgreSQL store: every state change is one transaction (I7).

Each public method opens its own transaction, writes the change, its events and
the version bumps of affected workers, and queues a `pg_notify` that PostgreSQL
delivers at commit. Methods return the ids of workers whose desired set changed,
so the caller can also fan the news out through Redis.
"""

from __future__ import annotations

import contextlib
import gc
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from streamorch.domain import placement
from streamorch.domain.errors import Conflict, LeaseExpired, NotFound, Superseded
from streamorch.domain.models import (
    EMPTY,
    Holding,
    Plan,
    Policy,
    Snapshot,
    StreamView,
    WorkerView,
)
from streamorch.store.database import DatabaseManager
from streamorch.store.heartbeats import Beat, HeartbeatBatcher
from streamorch.store.queries import sql
from streamorch.store.retry import retry_conflicts

# The advisory lock that serialises reconcile passes across replicas.
RECONCILE_LOCK_KEY = 0x52454331  # "REC1"
NOTIFY_CHANNEL = "streamorch_assignments"


@dataclass(frozen=True)
class StreamSpec:
    key: str
    url: str
    weight: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    requires: dict[str, str] = field(default_factory=dict)
    enabled: bool = True


@dataclass
class Event:
    kind: str
    stream: str | None = None
    worker: Any = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeartbeatResult:
    version: int
    lease_expires_at: Any
    status: str
    running_changed: bool
    became_draining: bool
    assignments_json: str  # the JSON array of granted assignments, as PostgreSQL built it

    @property
    def assignments(self) -> list[dict[str, Any]]:
        return json.loads(self.assignments_json)


@dataclass
class PassResult:
    ran: bool = False  # False: another replica held the lock
    planned: bool = False  # False: nothing new to consider, planning skipped
    expired: list[str] = field(default_factory=list)
    finished: int = 0
    plan: Plan = field(default_factory=Plan)
    touched: set[str] = field(default_factory=set)
    generation: int = 0
    graced: int = 0  # leases extended after a control-plane outage
    next_expiry_s: float | None = None  # until the earliest live lease ends


class EngineStore:
    def __init__(self, db: DatabaseManager) -> None:
        self.db = db
        self.heartbeats = HeartbeatBatcher(db)

    # -- helpers ---------------------------------------------------------------
    async def _events(self, conn: psycopg.AsyncConnection, events: Sequence[Event]) -> None:
        if not events:
            return
        await conn.execute(
            sql("insert_events"),
            {
                "kinds": [e.kind for e in events],
                "streams": [e.stream for e in events],
                "workers": [None if e.worker is None else str(e.worker) for e in events],
                "reasons": [e.reason for e in events],
                "details": [json.dumps(e.details) for e in events],
            },
        )

    async def _touch(self, conn: psycopg.AsyncConnection, worker_ids: Iterable[Any]) -> set[str]:
        """Bump the version of workers whose desired set changed, and notify at commit."""
        ids = sorted({str(w) for w in worker_ids if w is not None})
        if ids:
            await conn.execute(sql("bump_versions"), {"ids": ids})
            for chunk in _chunks(ids, 200):  # pg_notify payloads are limited to 8000 bytes
                await conn.execute(sql("notify"), {"payload": ",".join(chunk)})
        return set(ids)

    async def _stamp_revokes(self, conn: psycopg.AsyncConnection, keys: list[str]) -> None:
        """Record, after the version bump, which owner version first lacks these streams."""
        if keys:
            await conn.execute(sql("stamp_revokes"), {"keys": keys})

    async def _bump_generation(self, conn: psycopg.AsyncConnection) -> None:
        await conn.execute(sql("bump_generation"))

    # -- catalog ---------------------------------------------------------------
    @retry_conflicts
    async def upsert_stream(self, spec: StreamSpec) -> bool:
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                sql("upsert_stream"),
                {
                    "key": spec.key,
                    "url": spec.url,
                    "weight": spec.weight,
                    "labels": Jsonb(spec.labels),
                    "requires": Jsonb(spec.requires),
                    "enabled": spec.enabled,
                },
            )
            row = await cur.fetchone()
            created = bool(row and row[1])
            await self._events(
                conn, [Event("stream_created" if created else "stream_updated", spec.key)]
            )
            await self._bump_generation(conn)
        return created

    async def get_stream(self, key: str) -> dict[str, Any] | None:
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("get_stream"), {"key": key})
            return await cur.fetchone()

    async def list_streams(
        self,
        *,
        after: str,
        limit: int,
        state: str | None,
        worker: str | None,
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        """Streams in key order after `after`; `search`: only keys containing that text.

        Never prepared: a generic plan for these optional filters joins the whole catalog
        (seconds at 100,000 streams) where a plan for the actual values reads one page."""
        async with self.db.connection(prepared=False) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                sql("list_streams"),
                {
                    "after": after,
                    "limit": limit,
                    "state": state,
                    "worker": worker,
                    "search": search,
                },
            )
            return await cur.fetchall()

    @retry_conflicts
    async def delete_stream(self, key: str) -> set[str]:
        async with self.db.connection(prepared=False) as conn, conn.transaction():
            cur = await conn.execute(sql("delete_streams"), {"keys": [key]})
            if await cur.fetchone() is None:
                raise NotFound("stream", key)
            touched = await self._revoke_deleted(conn, [key])
            await self._bump_generation(conn)
        return touched

    async def _revoke_deleted(self, conn: psycopg.AsyncConnection, keys: list[str]) -> set[str]:
        cur = await conn.execute(sql("revoke_deleted"), {"keys": keys})
        revoked = await cur.fetchall()
        deleted = set(keys)
        await self._events(
            conn,
            [Event("stream_deleted", k) for k in keys]
            + [Event("revoked", k, w, "deleted") for k, w in revoked if k in deleted],
        )
        touched = await self._touch(conn, (w for _, w in revoked))
        await self._stamp_revokes(conn, [k for k, _ in revoked])
        return touched

    @retry_conflicts
    async def bulk(self, specs: Sequence[StreamSpec], mode: str) -> tuple[dict[str, int], set[str]]:
        """Upsert every spec; with mode `replace`, delete streams not listed. All or nothing."""
        counts = {"created": 0, "updated": 0, "deleted": 0}
        touched: set[str] = set()
        async with self.db.connection(prepared=False) as conn, conn.transaction():
            for chunk in _chunks(list(specs), 20_000):
                cur = await conn.execute(
                    sql("bulk_upsert_streams"),
                    {
                        "keys": [s.key for s in chunk],
                        "urls": [s.url for s in chunk],
                        "weights": [s.weight for s in chunk],
                        "labels": [json.dumps(s.labels) for s in chunk],
                        "requires": [json.dumps(s.requires) for s in chunk],
                        "enabled": [s.enabled for s in chunk],
                    },
                )
                for (created,) in await cur.fetchall():
                    counts["created" if created else "updated"] += 1
            if mode == "replace":
                cur = await conn.execute(
                    sql("delete_streams_not_in"), {"keys": [s.key for s in specs]}
                )
                deleted = [k for (k,) in await cur.fetchall()]
                counts["deleted"] = len(deleted)
                if deleted:
                    touched = await self._revoke_deleted(conn, deleted)
            await self._events(conn, [Event("catalog_bulk", None, None, mode, dict(counts))])
            await self._bump_generation(conn)
        return counts, touched

    # -- fleet -----------------------------------------------------------------
    @retry_conflicts
    async def register(
        self, *, name: str, capacity: int, labels: dict[str, str], address: str | None, ttl: float
    ) -> tuple[dict[str, Any], set[str]]:
        params = {
            "name": name,
            "capacity": capacity,
            "labels": Jsonb(labels),
            "address": address,
            "ttl": ttl,
        }
        async with self.db.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("lock_worker_by_name"), {"name": name})
            old = await cur.fetchone()
            if old is None:
                await cur.execute(sql("insert_worker"), params)
                row = await cur.fetchone()
                assert row is not None
                await self._events(conn, [Event("worker_joined", None, row["id"], "registered")])
                await self._bump_generation(conn)
                return {**row, "kept": 0}, set()
            await cur.execute(sql("reincarnate_worker"), {**params, "id": old["id"]})
            row = await cur.fetchone()
            assert row is not None
            events: list[Event] = []
            if old["status"] in ("active", "draining") and old["lease_valid"]:
                # Static membership: a restart within the lease keeps every stream.
                await cur.execute(sql("regrant_all"), {"id": old["id"]})
                kept = len(await cur.fetchall())
                events.append(
                    Event(
                        "worker_rejoined",
                        None,
                        old["id"],
                        "reregistered",
                        {"kept": kept, "incarnation": row["incarnation"]},
                    )
                )
            else:
                await cur.execute(sql("release_all"), {"id": old["id"]})
                released = [r["stream_key"] for r in await cur.fetchall()]
                await conn.execute(sql("untarget"), {"ids": [old["id"]]})
                kept = 0
                events.append(
                    Event(
                        "worker_joined",
                        None,
                        old["id"],
                        "reregistered",
                        {"incarnation": row["incarnation"]},
                    )
                )
                events += [Event("revoked", k, old["id"], "reregistered") for k in released]
            await self._events(conn, events)
            await self._bump_generation(conn)
            touched = await self._touch(conn, [old["id"]])
        return {**row, "kept": kept}, touched

    async def heartbeat(
        self,
        worker_id: uuid.UUID,
        *,
        incarnation: int,
        running: list[str],
        draining: bool,
        metrics: dict[str, Any],
        ttl: float,
        acked_version: int | None = None,
    ) -> HeartbeatResult:
        row = await self.heartbeats.submit(
            Beat(worker_id, incarnation, running, draining, metrics, acked_version, ttl)
        )
        if row is None:
            raise NotFound("worker", str(worker_id))
        if row["version"] is None:
            if row["incarnation"] != incarnation:
                raise Superseded(
                    f"incarnation {incarnation} was superseded by incarnation "
                    f"{row['incarnation']}: stop every stream and register again",
                    current_incarnation=row["incarnation"],
                )
            raise LeaseExpired(
                "the lease expired (or the worker was removed): stop every stream and register "
                "again",
                status=row["previous_status"],
            )
        return HeartbeatResult(
            version=row["version"],
            lease_expires_at=row["lease_expires_at"],
            status=row["status"],
            running_changed=bool(row["running_changed"]),
            became_draining=row["previous_status"] != "draining" and row["status"] == "draining",
            assignments_json=row["assignments"],
        )

    async def desired(self, worker_id: uuid.UUID) -> dict[str, Any]:
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("desired"), {"id": worker_id})
            row = await cur.fetchone()
        if row is None:
            raise NotFound("worker", str(worker_id))
        return row

    async def version(self, worker_id: uuid.UUID) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute(sql("worker_version"), {"id": worker_id})
            row = await cur.fetchone()
        if row is None:
            raise NotFound("worker", str(worker_id))
        return int(row[0])

    @retry_conflicts
    async def drain(self, worker_id: uuid.UUID) -> None:
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(sql("worker_status"), {"id": worker_id})
            row = await cur.fetchone()
            if row is None:
                raise NotFound("worker", str(worker_id))
            cur = await conn.execute(sql("set_draining"), {"id": worker_id})
            if await cur.fetchone() is None:
                raise Conflict(
                    f"worker {row[1]!r} is {row[2]}: only a live worker can be drained",
                    code="worker_not_live",
                )
            if row[2] != "draining":
                events = [Event("drain_started", None, worker_id, "requested")]
                if int(row[3]) == 0:
                    events.append(Event("drained", None, worker_id, "drain_complete"))
                await self._events(conn, events)
                await self._bump_generation(conn)

    @retry_conflicts
    async def deregister(self, worker_id: uuid.UUID, *, force: bool) -> set[str]:
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(sql("worker_status"), {"id": worker_id})
            row = await cur.fetchone()
            if row is None:
                raise NotFound("worker", str(worker_id))
            owned = int(row[3])
            if owned and not force:
                raise Conflict(
                    f"worker {row[1]!r} still owns {owned} stream(s): drain it first "
                    "(POST /v1/workers/{id}/drain) and retry once it owns nothing, or pass "
                    "force=true if the worker is known to be dead",
                    code="worker_owns_streams",
                    owned=owned,
                )
            cur = await conn.execute(sql("release_all"), {"id": worker_id})
            released = [k for (k,) in await cur.fetchall()]
            await conn.execute(sql("untarget"), {"ids": [worker_id]})
            await conn.execute(sql("retire_worker"), {"id": worker_id})
            await self._events(
                conn,
                [Event("worker_left", None, worker_id, "forced" if owned else "deregistered")]
                + [Event("revoked", k, worker_id, "forced_removal") for k in released],
            )
            await self._bump_generation(conn)
            return await self._touch(conn, [worker_id])

    async def list_workers(self, status: str | None) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("list_workers"), {"status": status})
            return await cur.fetchall()

    # -- cluster ---------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("status_counts"))
            counts = await cur.fetchone()
            await cur.execute(sql("worker_loads"))
            loads = await cur.fetchall()
            await cur.execute(sql("worker_counts"))
            by_status = {r["status"]: r["n"] for r in await cur.fetchall()}
        return {"streams": counts, "loads": loads, "workers": by_status}

    async def events(self, *, since: int, limit: int, stream: str | None) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                sql("list_events"), {"since": since, "limit": limit, "stream": stream}
            )
            return await cur.fetchall()

    async def snapshot(self, conn: psycopg.AsyncConnection) -> Snapshot:
        # Plain tuples, ids read as text and no JSON parsing of empty `requires`: at
        # 100,000 streams, dict rows, uuid.UUID objects turned back into str and
        # json.loads('{}') per row took ~1.5 s of a ~2.5 s snapshot
        # (bench/reconcile.py --breakdown).
        cur = await conn.execute(sql("live_workers"))
        workers = {
            wid: WorkerView(
                id=wid,
                capacity=capacity,
                labels=labels,
                draining=status == "draining",
                name=name,
            )
            for wid, name, capacity, labels, status in await cur.fetchall()
        }
        cur = await conn.execute(sql("placement_rows"))
        streams: dict[str, StreamView] = {}
        assignments: dict[str, Holding] = {}
        new = tuple.__new__  # what the named tuples' __new__ calls, minus a Python frame
        with paused_gc():
            for key, weight, requires, enabled, worker, state, target in await cur.fetchall():
                if weight is not None:
                    streams[key] = new(StreamView, (key, weight, requires or EMPTY, enabled))
                if worker is not None:
                    assignments[key] = new(Holding, (key, worker, state, target))
        return Snapshot(workers, streams, assignments)

    # -- reconcile -------------------------------------------------------------
    @retry_conflicts
    async def reconcile_pass(
        self, policy: Policy, seen_generation: int | None, *, lease_ttl: float = 10.0
    ) -> PassResult:
        """One pass, one transaction; skipped if another replica holds the lock (I7)."""
        result = PassResult()
        async with self.db.connection(prepared=False) as conn, conn.transaction():
            cur = await conn.execute(sql("reconcile_lock"), {"key": RECONCILE_LOCK_KEY})
            row = await cur.fetchone()
            if not row or not row[0]:
                return result
            result.ran = True
            touched: set[Any] = set()
            events: list[Event] = []

            cur = await conn.execute(sql("pass_gap"))
            gap = (await cur.fetchone())[0]
            if gap is not None and gap > lease_ttl / 2:
                # No pass ran for half a lease: the control plane itself was out, so
                # silence from workers proves nothing. Give every live worker a full
                # lease to reach us again rather than expiring the whole fleet at once.
                cur = await conn.execute(sql("grace_leases"), {"ttl": lease_ttl})
                graced = len(await cur.fetchall())
                result.graced = graced
                events.append(
                    Event(
                        "leases_extended",
                        None,
                        None,
                        "control_plane_outage",
                        {"gap_s": round(gap, 1), "workers": graced},
                    )
                )

            cur = await conn.execute(sql("expire_workers"))
            expired = [w for (w,) in await cur.fetchall()]
            if expired:
                cur = await conn.execute(sql("release_workers"), {"ids": expired})
                released = await cur.fetchall()
                await conn.execute(sql("untarget"), {"ids": expired})
                events += [Event("worker_expired", None, w, "lease_expired") for w in expired]
                events += [Event("revoked", k, w, "lease_expired") for k, w in released]
                touched.update(expired)
                result.expired = [str(w) for w in expired]

            cur = await conn.execute(sql("finish_moves"))
            finished = await cur.fetchall()
            preferred = {k: str(t) for k, _, t, _ in finished if t is not None}
            moved_from = {k: str(w) for k, w, _, _ in finished}
            events += [Event("stopped", k, w, reason) for k, w, _, reason in finished]
            result.finished = len(finished)
            if finished:
                cur = await conn.execute(
                    sql("drained_workers"), {"ids": list({str(w) for _, w, _, _ in finished})}
                )
                events += [
                    Event("drained", None, w, "drain_complete") for (w,) in await cur.fetchall()
                ]

            cur = await conn.execute(sql("generation"))
            generation = int((await cur.fetchone())[0])
            result.generation = generation
            if expired or finished or generation != seen_generation:
                snapshot = await self.snapshot(conn)
                snapshot.preferred = preferred
                with paused_gc():
                    plan = placement.plan(snapshot, policy)
                result.planned = True
                result.plan = plan
                touched |= await self._apply(conn, plan, events, moved_from)
            await self._events(conn, events)
            result.touched = await self._touch(conn, touched)
            await self._stamp_revokes(conn, [r.stream for r in result.plan.revokes])
            cur = await conn.execute(sql("next_expiry"))
            result.next_expiry_s = (await cur.fetchone())[0]
            await conn.execute(sql("note_pass"))  # last: see the query's comment
        return result

    async def _apply(
        self,
        conn: psycopg.AsyncConnection,
        plan: Plan,
        events: list[Event],
        moved_from: dict[str, str],
    ) -> set:
        touched: set[Any] = set()
        if plan.revokes:
            cur = await conn.execute(
                sql("apply_revokes"),
                {
                    "keys": [r.stream for r in plan.revokes],
                    "targets": [r.target for r in plan.revokes],
                    "reasons": [r.reason for r in plan.revokes],
                },
            )
            for key, worker, target, reason in await cur.fetchall():
                events.append(
                    Event(
                        "revoked", key, worker, reason, {"target": str(target) if target else None}
                    )
                )
                touched.add(worker)
        if plan.grants:
            cur = await conn.execute(
                sql("insert_grants"),
                {
                    "keys": [g.stream for g in plan.grants],
                    "workers": [g.worker for g in plan.grants],
                    "reasons": [g.reason for g in plan.grants],
                },
            )
            reasons = {g.stream: g.reason for g in plan.grants}
            for key, worker, token in await cur.fetchall():
                if reasons[key] == "moved":  # the second half of a move: revoked, stopped, moved
                    details = {"token": token, "from": moved_from.get(key)}
                    events.append(Event("moved", key, worker, "moved", details))
                else:
                    events.append(Event("assigned", key, worker, reasons[key], {"token": token}))
                touched.add(worker)
        return touched


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a snapshot is built or planned.

    Both allocate hundreds of thousands of objects that all stay alive, which makes
    the collector run again and again for nothing: about a third of a snapshot's
    time at 100,000 streams. Whatever cyclic garbage appears meanwhile is collected
    once the collector is back on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def bump_generation(db: DatabaseManager) -> None:
    """Record a change that placement must look at (e.g. a worker that began draining)."""
    async with db.connection() as conn:
        await conn.execute(sql("bump_generation"))
