"""The engine's store in memory: the ports of core/ports.py in plain Python, for unit tests.

It follows the PostgreSQL store's statements (store/sql/queries.sql) row for row, and
tests/contract runs the same suite against both so it stays honest. A transaction is
a copy of the state taken at its start and put back if it fails; the pass lock is a
flag. Times are seconds from `clock` (time.time by default; tests pass their own).
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from streamorch.domain import credentials
from streamorch.domain.errors import Conflict, NotFound
from streamorch.domain.models import EMPTY, Holding, Snapshot, StreamView, WorkerView
from streamorch.domain.records import Event, HeartbeatResult, StreamSpec, heartbeat_result
from streamorch.store.memory_pass import MemoryPassTx
from streamorch.store.memory_records import (
    LIVE,
    WORKER_STATUSES,
    State,
    StreamRow,
    WorkerRow,
    as_datetime,
)

Offload = Callable[..., Any]


class MemoryStore:
    """Implements core.ports.EngineStore (and its PassTx) in memory."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or time.time
        self.state = State()
        self.pending: list[uuid.UUID] = []  # heartbeats "waiting" in this process
        self._pass_locked = False

    # -- transactions ----------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self) -> Any:
        saved = copy.deepcopy(self.state)
        try:
            yield self.state
        except BaseException:
            self.state = saved
            raise

    def _token(self) -> int:
        token = self.state.next_token
        self.state.next_token += 1
        return token

    def _write_events(self, events: Sequence[Event]) -> None:
        s = self.state
        for e in events:
            worker = None if e.worker is None else uuid.UUID(str(e.worker))
            named = s.workers.get(worker) if worker is not None else None
            s.events.append(
                {
                    "id": s.next_event,
                    "at": as_datetime(self.clock()),
                    "kind": e.kind,
                    "stream_key": e.stream,
                    "worker_id": worker,
                    "worker_name": named.name if named else None,
                    "reason": e.reason,
                    "details": json.loads(json.dumps(e.details)),
                }
            )
            s.next_event += 1

    def _touch(self, worker_ids: Iterable[Any]) -> set[str]:
        ids = {str(w) for w in worker_ids if w is not None}
        for wid in ids:
            worker = self.state.workers.get(uuid.UUID(wid))
            if worker is not None:
                worker.version += 1
        return ids

    def _stamp_revokes(self, keys: Sequence[str]) -> None:
        for key in keys:
            a = self.state.assignments.get(key)
            if a is not None and a.state == "revoking":
                a.revoke_version = self.state.workers[a.worker_id].version

    def _bump_generation(self) -> None:
        self.state.generation += 1

    def _untarget(self, ids: Iterable[uuid.UUID]) -> None:
        gone = set(ids)
        for a in self.state.assignments.values():
            if a.target_id in gone:
                a.target_id = None

    def _release(self, worker_id: uuid.UUID) -> list[str]:
        keys = [k for k, a in self.state.assignments.items() if a.worker_id == worker_id]
        for k in keys:
            del self.state.assignments[k]
        return keys

    # -- catalog ---------------------------------------------------------------
    async def upsert_stream(self, spec: StreamSpec) -> bool:
        with self._tx():
            created = self._upsert(spec, always=True)
            self._write_events([Event("stream_created" if created else "stream_updated", spec.key)])
            self._bump_generation()
        return bool(created)

    def _upsert(self, spec: StreamSpec, *, always: bool) -> bool | None:
        """True: created; False: updated; None: unchanged (bulk writes nothing then)."""
        s, now = self.state, self.clock()
        old = s.streams.get(spec.key)
        if old is None:
            s.streams[spec.key] = StreamRow(
                spec.key, spec.url, spec.weight, dict(spec.labels), dict(spec.requires),
                spec.enabled, now, now,
            )  # fmt: skip
            return True
        new = (spec.url, spec.weight, spec.labels, spec.requires, spec.enabled)
        if not always and new == (old.url, old.weight, old.labels, old.requires, old.enabled):
            return None
        old.url, old.weight, old.enabled = spec.url, spec.weight, spec.enabled
        old.labels, old.requires, old.updated_at = dict(spec.labels), dict(spec.requires), now
        return False

    def _stream_row(self, st: StreamRow) -> dict[str, Any]:
        a = self.state.assignments.get(st.key)
        w = self.state.workers.get(a.worker_id) if a else None
        t = self.state.workers.get(a.target_id) if a and a.target_id else None
        return {
            "key": st.key,
            "url": st.url,
            "weight": st.weight,
            "labels": dict(st.labels),
            "requires": dict(st.requires),
            "enabled": st.enabled,
            "created_at": as_datetime(st.created_at),
            "updated_at": as_datetime(st.updated_at),
            "worker_id": a.worker_id if a else None,
            "worker_name": w.name if w else None,
            "token": a.token if a else None,
            "state": a.state if a else None,
            "since": as_datetime(a.since) if a else None,
            "reason": a.reason if a else None,
            "target_id": a.target_id if a else None,
            "target_name": t.name if t else None,
        }

    async def get_stream(self, key: str) -> dict[str, Any] | None:
        st = self.state.streams.get(key)
        return None if st is None else self._stream_row(st)

    async def list_streams(
        self,
        *,
        after: str,
        limit: int,
        state: str | None,
        worker: str | None,
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        rows = []
        for key in sorted(k for k in self.state.streams if k > after):
            row = self._stream_row(self.state.streams[key])
            if state == "assigned" and row["state"] != "granted":
                continue
            if state == "moving" and row["state"] != "revoking":
                continue
            if state == "unassigned" and row["worker_id"] is not None:
                continue
            if worker is not None and worker not in (row["worker_name"], str(row["worker_id"])):
                continue
            if search is not None and search not in key:
                continue
            rows.append(row)
            if len(rows) == limit:
                break
        return rows

    async def delete_stream(self, key: str) -> set[str]:
        with self._tx() as s:
            if s.streams.pop(key, None) is None:
                raise NotFound("stream", key)
            touched = self._revoke_deleted([key])
            self._bump_generation()
        return touched

    def _revoke_deleted(self, keys: list[str]) -> set[str]:
        revoked = []
        for k in keys:
            a = self.state.assignments.get(k)
            if a is not None and a.state == "granted":
                a.state, a.revoked_at, a.target_id, a.reason = (
                    "revoking",
                    self.clock(),
                    None,
                    "deleted",
                )
                revoked.append((k, a.worker_id))
        self._write_events(
            [Event("stream_deleted", k) for k in keys]
            + [Event("revoked", k, w, "deleted") for k, w in revoked]
        )
        touched = self._touch(w for _, w in revoked)
        self._stamp_revokes([k for k, _ in revoked])
        return touched

    async def bulk(self, specs: Sequence[StreamSpec], mode: str) -> tuple[dict[str, int], set[str]]:
        counts = {"created": 0, "updated": 0, "deleted": 0}
        touched: set[str] = set()
        with self._tx() as s:
            for spec in specs:
                created = self._upsert(spec, always=False)
                if created is not None:
                    counts["created" if created else "updated"] += 1
            if mode == "replace":
                listed = {spec.key for spec in specs}
                deleted = [k for k in s.streams if k not in listed]
                for k in deleted:
                    del s.streams[k]
                counts["deleted"] = len(deleted)
                if deleted:
                    touched = self._revoke_deleted(deleted)
            self._write_events([Event("catalog_bulk", None, None, mode, dict(counts))])
            self._bump_generation()
        return counts, touched

    # -- fleet -----------------------------------------------------------------
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
        now = self.clock()
        with self._tx() as s:
            old = next((w for w in s.workers.values() if w.name == name), None)
            valid = old is not None and old.lease_expires_at > now
            if (
                old is not None
                and not supersede
                and old.status in LIVE
                and valid
                and not credentials.matches(proof, old.secret_hash)
            ):
                raise credentials.name_in_use(name, max(old.lease_expires_at - now, 0.0))
            if old is None:
                w = WorkerRow(
                    uuid.uuid4(), name, capacity, dict(labels), address, kind, now + ttl,
                    secret_hash, now, now,
                )  # fmt: skip
                s.workers[w.id] = w
                self._write_events([Event("worker_joined", None, w.id, "registered")])
                self._bump_generation()
                return {**self._registered(w), "kept": 0}, set()
            was_live = old.status in LIVE and valid
            old.incarnation += 1
            old.capacity, old.labels, old.address, old.kind = capacity, dict(labels), address, kind
            old.status, old.running, old.metrics, old.acked_version = "active", [], {}, None
            old.secret_hash, old.version = secret_hash, old.version + 1
            old.registered_at = old.last_heartbeat = now
            old.lease_expires_at = now + ttl
            events: list[Event] = []
            if was_live:
                kept = 0
                for a in s.assignments.values():
                    if a.worker_id == old.id and a.state == "granted":
                        a.token, a.since = self._token(), now
                        kept += 1
                details = {"kept": kept, "incarnation": old.incarnation}
                events.append(Event("worker_rejoined", None, old.id, "reregistered", details))
            else:
                released = self._release(old.id)
                self._untarget([old.id])
                kept = 0
                details = {"incarnation": old.incarnation}
                events.append(Event("worker_joined", None, old.id, "reregistered", details))
                events += [Event("revoked", k, old.id, "reregistered") for k in released]
            self._write_events(events)
            self._bump_generation()
            touched = self._touch([old.id])
            return {**self._registered(old), "kept": kept}, touched

    @staticmethod
    def _registered(w: WorkerRow) -> dict[str, Any]:
        return {
            "id": w.id,
            "incarnation": w.incarnation,
            "lease_expires_at": as_datetime(w.lease_expires_at),
        }

    def _assignments_json(self, worker_id: uuid.UUID) -> str:
        granted = sorted(
            (a for a in self.state.assignments.values() if a.worker_id == worker_id),
            key=lambda a: a.stream_key,
        )
        items = [
            {
                "stream": a.stream_key,
                "url": self.state.streams[a.stream_key].url,
                "weight": self.state.streams[a.stream_key].weight,
                "token": a.token,
            }
            for a in granted
            if a.state == "granted" and a.stream_key in self.state.streams
        ]
        return json.dumps(items)

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
        secret_hash = None if secret is None else credentials.digest(secret)
        now = self.clock()
        with self._tx() as s:
            w = s.workers.get(worker_id)
            row: dict[str, Any] | None = None
            if w is not None:
                secret_ok = secret_hash is None or w.secret_hash == secret_hash
                row = {
                    "incarnation": w.incarnation,
                    "previous_status": w.status,
                    "secret_ok": secret_ok,
                    "running_changed": w.running != list(running),
                    "version": None,
                }
                if w.incarnation == incarnation and secret_ok and w.status in LIVE:
                    version = w.version  # the version the assignments are read with
                    w.last_heartbeat, w.lease_expires_at = now, now + ttl
                    w.running, w.acked_version, w.metrics = list(running), acked_version, metrics
                    if draining and w.status != "draining":
                        w.status = "draining"
                        self._bump_generation()  # in the beat's transaction, as PostgreSQL
                    row.update(
                        version=version,
                        lease_expires_at=as_datetime(w.lease_expires_at),
                        status=w.status,
                        assignments=self._assignments_json(w.id),
                    )
        return heartbeat_result(row, worker_id, incarnation)

    async def desired(self, worker_id: uuid.UUID) -> dict[str, Any]:
        w = self.state.workers.get(worker_id)
        if w is None:
            raise NotFound("worker", str(worker_id))
        return {
            "version": w.version,
            "lease_expires_at": as_datetime(w.lease_expires_at),
            "status": w.status,
            "incarnation": w.incarnation,
            "assignments": self._assignments_json(w.id),
        }

    async def worker_secret_hash(self, worker_id: uuid.UUID) -> bytes | None:
        w = self.state.workers.get(worker_id)
        if w is None:
            raise NotFound("worker", str(worker_id))
        return w.secret_hash

    async def version(self, worker_id: uuid.UUID) -> int:
        w = self.state.workers.get(worker_id)
        if w is None:
            raise NotFound("worker", str(worker_id))
        return w.version

    def _owned(self, worker_id: uuid.UUID) -> list[str]:
        return [k for k, a in self.state.assignments.items() if a.worker_id == worker_id]

    async def drain(self, worker_id: uuid.UUID) -> None:
        with self._tx() as s:
            w = s.workers.get(worker_id)
            if w is None:
                raise NotFound("worker", str(worker_id))
            if w.status not in LIVE:
                raise Conflict(
                    f"worker {w.name!r} is {w.status}: only a live worker can be drained",
                    code="worker_not_live",
                )
            if w.status != "draining":
                w.status = "draining"
                events = [Event("drain_started", None, worker_id, "requested")]
                if not self._owned(worker_id):
                    events.append(Event("drained", None, worker_id, "drain_complete"))
                self._write_events(events)
                self._bump_generation()

    async def deregister(self, worker_id: uuid.UUID, *, force: bool) -> set[str]:
        with self._tx() as s:
            w = s.workers.get(worker_id)
            if w is None:
                raise NotFound("worker", str(worker_id))
            owned = len(self._owned(worker_id))
            if owned and not force:
                raise Conflict(
                    f"worker {w.name!r} still owns {owned} stream(s): drain it first "
                    "(POST /v1/workers/{id}/drain) and retry once it owns nothing, or pass "
                    "force=true if the worker is known to be dead",
                    code="worker_owns_streams",
                    owned=owned,
                )
            released = self._release(worker_id)
            self._untarget([worker_id])
            w.status, w.lease_expires_at, w.running = "left", self.clock(), []
            w.version += 1
            self._write_events(
                [Event("worker_left", None, worker_id, "forced" if owned else "deregistered")]
                + [Event("revoked", k, worker_id, "forced_removal") for k in released]
            )
            self._bump_generation()
            return self._touch([worker_id])

    def _worker_row(self, w: WorkerRow) -> dict[str, Any]:
        keys = sorted(self._owned(w.id))
        load = sum(self.state.streams[k].weight for k in keys if k in self.state.streams)
        return {
            "id": w.id,
            "name": w.name,
            "status": w.status,
            "incarnation": w.incarnation,
            "capacity": w.capacity,
            "labels": dict(w.labels),
            "address": w.address,
            "last_heartbeat": as_datetime(w.last_heartbeat),
            "lease_expires_at": as_datetime(w.lease_expires_at),
            "kind": w.kind,
            "generation": w.generation,
            "load": load,
            "streams": len(keys),
            "pinned": keys if w.kind == "original" else None,
        }

    async def list_workers(
        self, statuses: Sequence[str] | None = None, *, after: str = "", limit: int = 1000
    ) -> list[dict[str, Any]]:
        chosen = set(statuses or WORKER_STATUSES)
        found = sorted(
            (w for w in self.state.workers.values() if w.status in chosen and w.name > after),
            key=lambda w: w.name,
        )
        return [self._worker_row(w) for w in found[:limit]]

    async def get_worker(
        self, *, name: str | None = None, worker_id: uuid.UUID | None = None
    ) -> dict[str, Any] | None:
        for w in self.state.workers.values():
            if (name is not None and w.name == name) or (
                worker_id is not None and w.id == worker_id
            ):
                return self._worker_row(w)
        return None

    # -- cluster ---------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        s = self.state
        enabled = [st for st in s.streams.values() if st.enabled]
        counts = {
            "enabled": len(enabled),
            "disabled": len(s.streams) - len(enabled),
            "assigned": sum(1 for a in s.assignments.values() if a.state == "granted"),
            "moving": sum(1 for a in s.assignments.values() if a.state == "revoking"),
            "unassigned": sum(1 for st in enabled if st.key not in s.assignments),
        }
        loads = [
            {k: r[k] for k in ("id", "name", "status", "capacity", "load")}
            for r in (self._worker_row(w) for w in s.workers.values() if w.status in LIVE)
        ]
        by_status: dict[str, int] = {}
        for w in s.workers.values():
            by_status[w.status] = by_status.get(w.status, 0) + 1
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
        rows = [
            e
            for e in self.state.events
            if e["id"] > since and (stream is None or e["stream_key"] == stream)
        ]
        if newest or before is not None:
            top = before or 2**63 - 1
            rows = [e for e in reversed(rows) if e["id"] < top]
        out = []
        for e in rows[:limit]:
            w = self.state.workers.get(e["worker_id"]) if e["worker_id"] else None
            out.append(
                {
                    **e,
                    "worker_name": e["worker_name"] or (w.name if w else None),
                    "worker_kind": w.kind if w else None,
                    "worker_generation": w.generation if w else None,
                }
            )
        return out

    # -- placement -------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        s = self.state
        workers = {
            str(w.id): WorkerView(
                id=str(w.id),
                capacity=w.capacity,
                labels=dict(w.labels),
                draining=w.status == "draining",
                name=w.name,
                pinned=w.kind == "original",
            )
            for w in s.workers.values()
            if w.status in LIVE
        }
        streams = {
            st.key: StreamView(st.key, st.weight, dict(st.requires) or EMPTY, st.enabled)
            for st in s.streams.values()
            if st.enabled or st.key in s.assignments
        }
        assignments = {
            k: Holding(
                k, str(a.worker_id), a.state, None if a.target_id is None else str(a.target_id)
            )
            for k, a in s.assignments.items()
        }
        return Snapshot(workers, streams, assignments)

    async def placement_snapshot(self, offload: Offload) -> Snapshot:
        snapshot: Snapshot = await offload(self._snapshot)
        return snapshot

    def pending_workers(self) -> list[uuid.UUID]:
        return sorted(self.pending)

    @contextlib.asynccontextmanager
    async def pass_tx(self, offload: Offload) -> AsyncIterator[MemoryPassTx]:
        tx = MemoryPassTx(self, offload)
        try:
            with self._tx():
                yield tx
        finally:
            if tx.locked:
                self._pass_locked = False


class MemoryRetentionStore:
    """core.ports.RetentionStore over a MemoryStore: forgets departed workers on request."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def forget_departed(self, *, older_than_s: float, limit: int) -> list[str] | None:
        return []

    async def forget(self, worker_id: uuid.UUID) -> str:
        w = self.store.state.workers.get(worker_id)
        if w is None:
            raise NotFound("worker", str(worker_id))
        if w.status in LIVE:
            raise Conflict(
                f"worker {w.name!r} is {w.status}: only a departed (left or expired) worker "
                "can be forgotten",
                code="worker_not_departed",
                status=w.status,
            )
        self.store._write_events(
            [Event("worker_forgotten", None, worker_id, "requested", {"name": w.name})]
        )
        del self.store.state.workers[worker_id]
        return w.name

    async def purge_events(
        self, *, max_age_s: float | None, max_count: int | None, limit: int
    ) -> int | None:
        return 0

    async def table_sizes(self) -> dict[str, dict[str, int]]:
        return {}
