"""A reconcile pass's steps on the in-memory store (store/memory.py): core.ports.PassTx."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from streamorch.domain.models import Grant, Revoke, Snapshot
from streamorch.domain.records import Event
from streamorch.store.memory_records import LIVE, AssignmentRow, State

Offload = Callable[..., Any]


class MemoryStore(Protocol):
    """What a pass uses of store/memory.py's MemoryStore (named here, not imported: no cycle)."""

    state: State
    clock: Callable[[], float]
    _pass_locked: bool

    def _snapshot(self) -> Snapshot: ...
    def _stamp_revokes(self, keys: Sequence[str]) -> None: ...
    def _token(self) -> int: ...
    def _touch(self, worker_ids: Iterable[Any]) -> set[str]: ...
    def _untarget(self, ids: Iterable[uuid.UUID]) -> None: ...
    def _write_events(self, events: Sequence[Event]) -> None: ...


class MemoryPassTx:
    """One pass's steps on a MemoryStore (core.ports.PassTx)."""

    def __init__(self, store: MemoryStore, offload: Offload) -> None:
        self.store = store
        self.offload = offload
        self.locked = False

    @property
    def s(self) -> State:
        return self.store.state

    async def try_lock(self) -> bool:
        if self.store._pass_locked:
            return False
        self.store._pass_locked = self.locked = True
        return True

    async def pass_gap(self) -> float | None:
        last = self.s.last_pass_at
        return None if last is None else self.store.clock() - last

    async def grace_leases(self, ttl: float) -> int:
        until = self.store.clock() + ttl
        live = [w for w in self.s.workers.values() if w.status in LIVE]
        for w in live:
            w.lease_expires_at = max(w.lease_expires_at, until)
        return len(live)

    async def expire(
        self, grace: float, alive: Sequence[Any]
    ) -> tuple[list[Any], list[tuple[str, Any]]]:
        now, spared = self.store.clock(), {str(a) for a in alive}
        expired = [
            w.id
            for w in self.s.workers.values()
            if w.status in LIVE and w.lease_expires_at < now - grace and str(w.id) not in spared
        ]
        for wid in expired:
            self.s.workers[wid].status = "expired"
            self.s.workers[wid].version += 1
        gone = set(expired)
        released = [(k, a.worker_id) for k, a in self.s.assignments.items() if a.worker_id in gone]
        for k, _ in released:
            del self.s.assignments[k]
        self.store._untarget(expired)
        return expired, released

    async def finish_moves(self) -> list[tuple[str, Any, Any, str]]:
        done = []
        for k, a in list(self.s.assignments.items()):
            w = self.s.workers[a.worker_id]
            if (
                a.state == "revoking"
                and k not in w.running
                and w.acked_version is not None
                and a.revoke_version is not None
                and w.acked_version >= a.revoke_version
            ):
                del self.s.assignments[k]
                done.append((k, a.worker_id, a.target_id, a.reason))
        return done

    async def drained_workers(self, ids: Sequence[str]) -> list[Any]:
        owners = {a.worker_id for a in self.s.assignments.values()}
        return [
            w.id
            for w in (self.s.workers.get(uuid.UUID(i)) for i in ids)
            if w is not None and w.status == "draining" and w.id not in owners
        ]

    async def generation(self) -> int:
        return self.s.generation

    async def snapshot(self) -> Snapshot:
        snapshot: Snapshot = await self.offload(self.store._snapshot)
        return snapshot

    async def recent_join_ages(self, horizon: float) -> list[float]:
        now = self.store.clock()
        return [
            now - w.registered_at
            for w in self.s.workers.values()
            if w.status in LIVE and w.registered_at > now - horizon
        ]

    async def apply_revokes(self, revokes: Sequence[Revoke]) -> list[tuple[str, Any, Any, str]]:
        rows = []
        for r in revokes:
            a = self.s.assignments.get(r.stream)
            if a is None or a.state != "granted":
                continue
            a.state, a.revoked_at, a.reason = "revoking", self.store.clock(), r.reason
            a.target_id = None if r.target is None else uuid.UUID(r.target)
            rows.append((a.stream_key, a.worker_id, a.target_id, a.reason))
        return rows

    async def insert_grants(self, grants: Sequence[Grant]) -> list[tuple[str, str, Any]]:
        rows = []
        now = self.store.clock()
        for g in grants:
            if g.stream in self.s.assignments:  # the primary key: PostgreSQL would refuse
                raise ValueError(f"stream {g.stream!r} is already assigned")
            token = self.store._token()
            self.s.assignments[g.stream] = AssignmentRow(
                g.stream, uuid.UUID(g.worker), token, g.reason, now
            )
            rows.append((g.stream, g.worker, token))
        return rows

    async def write_events(self, events: Sequence[Event]) -> None:
        self.store._write_events(events)

    async def touch(self, worker_ids: Iterable[Any]) -> set[str]:
        return self.store._touch(worker_ids)

    async def stamp_revokes(self, keys: Sequence[str]) -> None:
        self.store._stamp_revokes(keys)

    async def next_expiry(self, grace: float, alive: Sequence[Any]) -> float | None:
        spared = {str(a) for a in alive}
        leases = [
            w.lease_expires_at
            for w in self.s.workers.values()
            if w.status in LIVE and str(w.id) not in spared
        ]
        return None if not leases else min(leases) - self.store.clock() + grace

    async def note_pass(self) -> None:
        self.s.last_pass_at = self.store.clock()
