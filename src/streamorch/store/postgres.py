"""The engine's PostgreSQL store: every state change is one transaction (I7).

Each public method opens its own transaction, writes the change, its events and
the version bumps of affected workers, and queues a `pg_notify` that PostgreSQL
delivers at commit. Methods return the ids of workers whose desired set changed,
so the caller can also fan the news out through Redis.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from streamorch.domain import credentials
from streamorch.domain.errors import Conflict, NotFound
from streamorch.domain.models import Snapshot
from streamorch.domain.records import Event, HeartbeatResult, StreamSpec, heartbeat_result
from streamorch.store import passes, writes
from streamorch.store.database import DatabaseManager
from streamorch.store.heartbeats import Beat, HeartbeatBatcher
from streamorch.store.queries import sql
from streamorch.store.retry import driver_errors_wrapped, retry_conflicts
from streamorch.store.rows import fetch_dicts, page_cursor

WORKER_STATUSES = frozenset({"active", "draining", "expired", "left"})
LIVE_STATUSES = frozenset({"active", "draining"})


@driver_errors_wrapped
class EngineStore:
    def __init__(self, db: DatabaseManager) -> None:
        self.db = db
        self.heartbeats = HeartbeatBatcher(db)

    # -- helpers ---------------------------------------------------------------
    async def _events(self, conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
        await writes.events(conn, events)

    async def _touch(self, conn: psycopg.AsyncConnection[Any], worker_ids: Any) -> set[str]:
        return await writes.touch(conn, worker_ids)

    async def _stamp_revokes(self, conn: psycopg.AsyncConnection[Any], keys: list[str]) -> None:
        await writes.stamp_revokes(conn, keys)

    async def _bump_generation(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await writes.bump_generation(conn)

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
            for chunk in writes.chunks(list(specs), 20_000):
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
                raise credentials.name_in_use(name, old["lease_left_s"])
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
        return heartbeat_result(row, worker_id, incarnation)

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

    # -- placement -------------------------------------------------------------
    async def placement_snapshot(self, offload: writes.Offload) -> Snapshot:
        """Everything placement needs, read in a transaction of its own."""
        async with self.db.connection() as conn:
            return await passes.read_snapshot(conn, offload)

    def pending_workers(self) -> list[uuid.UUID]:
        """Workers with a heartbeat received but not written yet: they are alive."""
        return self.heartbeats.pending_workers()

    def pass_tx(
        self, offload: writes.Offload
    ) -> contextlib.AbstractAsyncContextManager[passes.PostgresPassTx]:
        """One reconcile pass's transaction (its steps: store/passes.py)."""
        return passes.pass_tx(self.db, offload)
