"""The engine's PostgreSQL store: every state change is one transaction (I7).

Each public method opens its own transaction, writes the change, its events and
the version bumps of affected workers, and queues a `pg_notify` that PostgreSQL
delivers at commit. Methods return the ids of workers whose desired set changed,
so the caller can also fan the news out through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from streamorch.domain import credentials, placement, settle
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
from streamorch.store.rows import fetch_dicts, page_cursor

WORKER_STATUSES = frozenset({"active", "draining", "expired", "left"})
LIVE_STATUSES = frozenset({"active", "draining"})

# The advisory lock that serialises reconcile passes across replicas.
RECONCILE_LOCK_KEY = 0x52454331  # "REC1"
NOTIFY_CHANNEL = "streamorch_assignments"

T = TypeVar("T")
# Below this many rows, CPU work stays on the event loop: a thread hop costs more.
OFFLOAD_MIN_ROWS = 1000


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
    settle_s: float = 0.0  # placement waits this much longer for registrations to settle


class EngineStore:
    def __init__(self, db: DatabaseManager, *, plan_in_thread: bool = True) -> None:
        self.db = db
        self.heartbeats = HeartbeatBatcher(db)
        self.plan_in_thread = plan_in_thread

    # -- helpers ---------------------------------------------------------------
    async def _events(self, conn: psycopg.AsyncConnection, events: Sequence[Event]) -> None:
        if not events:
            return
        if len(events) < OFFLOAD_MIN_ROWS:
            params = event_params(events)
        else:  # a large pass's events: encoding them is seconds of CPU at 100,000
            params = await self.offload(event_params, events)
        await conn.execute(sql("insert_events"), params)

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
            cur = page_cursor(conn)
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
            return await fetch_dicts(cur)

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
        self,
        *,
        name: str,
        capacity: int,
        labels: dict[str, str],
        address: str | None,
        ttl: float,
        kind: str = "sdk",
        secret_hash: bytes | None = None,
        proof: str | None = None,
        supersede: bool = True,
    ) -> tuple[dict[str, Any], set[str]]:
        """Register `name`; `secret_hash` is the new incarnation's.

        With `supersede` false, a name whose holder is live is taken over only by a
        call that proves to be that holder (`proof`, the holder's secret): otherwise
        `Conflict("name_in_use")`.
        """
        params = {
            "name": name,
            "capacity": capacity,
            "labels": Jsonb(labels),
            "address": address,
            "ttl": ttl,
            "kind": kind,  # "original": an instance of the original protocol (core/compat.py)
            "secret_hash": secret_hash,
        }
        async with self.db.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("lock_worker_by_name"), {"name": name})
            old = await cur.fetchone()
            if (
                old is not None
                and not supersede
                and old["status"] in ("active", "draining")
                and old["lease_valid"]
                and not credentials.matches(proof, old["secret_hash"])
            ):
                retry_after = max(1, math.ceil(old["lease_left_s"]))
                raise Conflict(
                    f"a live worker holds the name {name!r}: send its secret in "
                    f"{credentials.HEADER} to register as it again, or retry after its lease "
                    f"ends (in {retry_after} s); an admin may pass force=true",
                    code="name_in_use",
                    retry_after_s=retry_after,
                )
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
        secret: str | None = None,
    ) -> HeartbeatResult:
        """Renew the lease and record the running set.

        `acked_version`: the desired-set version the worker applied; a stop report
        without one never finishes a move (I9). `secret` None: the caller
        authenticated the worker itself.
        """
        secret_hash = None if secret is None else credentials.digest(secret)
        row = await self.heartbeats.submit(
            Beat(
                worker_id, incarnation, running, draining, metrics, acked_version, ttl, secret_hash
            )
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
            if not row["secret_ok"]:
                raise credentials.refused(worker_id)
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

    async def worker_secret_hash(self, worker_id: uuid.UUID) -> bytes | None:
        """The digest of the worker's current secret; NotFound when there is no such worker."""
        async with self.db.connection() as conn:
            cur = await conn.execute(sql("worker_secret"), {"id": worker_id})
            row = await cur.fetchone()
        if row is None:
            raise NotFound("worker", str(worker_id))
        return None if row[0] is None else bytes(row[0])

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

    async def list_workers(
        self, statuses: Sequence[str] | None = None, *, after: str = "", limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Up to `limit` workers with one of `statuses` (None: any) in name order after
        `after`, each with its load. Live workers come from their own index, never by
        reading past the departed ones."""
        chosen = set(statuses or WORKER_STATUSES)
        # Unprepared: each call is planned with its values, so a NULL filter folds away
        # and the partial indexes apply (lists are not the hot path).
        async with self.db.connection(prepared=False) as conn:
            cur = page_cursor(conn)
            if chosen <= LIVE_STATUSES:
                status = next(iter(chosen)) if len(chosen) == 1 else None
                params = {"after": after, "limit": limit, "status": status}
                await cur.execute(sql("list_live_workers"), params)
            else:
                params = {"after": after, "limit": limit, "statuses": sorted(chosen)}
                await cur.execute(sql("list_workers"), params)
            return await fetch_dicts(cur)

    async def get_worker(
        self, *, name: str | None = None, worker_id: uuid.UUID | None = None
    ) -> dict[str, Any] | None:
        """One worker by name or by id, whatever its status, with its load."""
        async with self.db.connection(prepared=False) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("get_worker"), {"name": name, "id": worker_id})
            return await cur.fetchone()

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

    async def events(
        self,
        *,
        since: int = 0,
        limit: int,
        stream: str | None,
        newest: bool = False,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """Events after `since`: oldest first, or with `newest` (or `before`, an id they
        are all below) newest first."""
        params = {"since": since, "limit": limit, "stream": stream}
        if newest or before is not None:
            query, params["before"] = "list_newest_events", before or 2**63 - 1
        else:
            query = "list_events"
        async with self.db.connection(prepared=False) as conn:  # planned per stream filter
            cur = page_cursor(conn)
            await cur.execute(sql(query), params)
            return await fetch_dicts(cur)

    async def snapshot(self, conn: psycopg.AsyncConnection) -> Snapshot:
        """Everything placement needs, read on `conn`; built off the event loop."""
        cur = await conn.execute(sql("live_workers"))
        worker_rows = await cur.fetchall()
        cur = await conn.execute(sql("placement_rows"))
        rows = await cur.fetchall()
        return await self.offload(build_snapshot, worker_rows, rows)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy, pure work (snapshot building, planning) in a worker thread.

        A pass at 100,000 streams spends about half a second in Python; on the event
        loop that half second would hold back every heartbeat (I9). With
        `plan_in_thread` off it runs inline (kept for comparison: bench/pass_latency.py).
        """
        if not self.plan_in_thread:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    # -- reconcile -------------------------------------------------------------
    @retry_conflicts
    async def reconcile_pass(
        self,
        policy: Policy,
        seen_generation: int | None,
        *,
        lease_ttl: float = 10.0,
        expiry_grace_s: float = 0.0,
    ) -> PassResult:
        """One pass, one transaction; skipped if another replica holds the lock (I7).

        `expiry_grace_s`: how late this server recently ran (core/loop_lag.py); a lease
        expires only once it ended longer ago than that, and never while a heartbeat
        of its worker waits in this server (I9).
        """
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

            alive = self.heartbeats.pending_workers()
            expiry = {"grace": expiry_grace_s, "alive": alive}
            cur = await conn.execute(sql("expire_workers"), expiry)
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
                result.settle_s = await self._settle_s(conn, policy)
                snapshot.settling = result.settle_s > 0
                plan = await self.offload(plan_paused, snapshot, policy)
                result.planned = True
                result.plan = plan
                touched |= await self._apply(conn, plan, events, moved_from)
            await self._events(conn, events)
            result.touched = await self._touch(conn, touched)
            await self._stamp_revokes(conn, [r.stream for r in result.plan.revokes])
            cur = await conn.execute(sql("next_expiry"), expiry)
            result.next_expiry_s = (await cur.fetchone())[0]
            await conn.execute(sql("note_pass"))  # last: see the query's comment
        return result

    async def _settle_s(self, conn: psycopg.AsyncConnection, policy: Policy) -> float:
        if policy.settle_s <= 0:
            return 0.0
        cur = await conn.execute(
            sql("recent_joins"), {"horizon": policy.settle_s + policy.settle_max_s}
        )
        ages = [age for (age,) in await cur.fetchall()]
        return settle.remaining(ages, policy.settle_s, policy.settle_max_s)

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
            rows = await cur.fetchall()
            granted = await self.offload(grant_events, plan, rows, moved_from)
            events += granted
            touched.update(e.worker for e in granted)
        return touched


def event_params(events: Sequence[Event]) -> dict[str, list[Any]]:
    """The `insert_events` statement's parameters."""
    return {
        "kinds": [e.kind for e in events],
        "streams": [e.stream for e in events],
        "workers": [None if e.worker is None else str(e.worker) for e in events],
        "reasons": [e.reason for e in events],
        "details": [json.dumps(e.details) for e in events],
    }


def grant_events(plan: Plan, rows: list[tuple], moved_from: dict[str, str]) -> list[Event]:
    """The events of the grants written (rows of `insert_grants`): assigned, or moved."""
    reasons = {g.stream: g.reason for g in plan.grants}
    events = []
    with paused_gc():
        for key, worker, token in rows:
            if reasons[key] == "moved":  # the second half of a move: revoked, stopped, moved
                details = {"token": token, "from": moved_from.get(key)}
                events.append(Event("moved", key, worker, "moved", details))
            else:
                events.append(Event("assigned", key, worker, reasons[key], {"token": token}))
    return events


def build_snapshot(worker_rows: list[tuple], rows: list[tuple]) -> Snapshot:
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


def plan_paused(snapshot: Snapshot, policy: Policy) -> Plan:
    with paused_gc():
        return placement.plan(snapshot, policy)


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
