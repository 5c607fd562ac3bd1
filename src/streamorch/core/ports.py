"""The ports of the engine: what core needs from its store and its notifier.

Core (the `Orchestrator`, the `Reconciler`) is written against these Protocols
only; `store/` implements them on PostgreSQL and Redis (`store/postgres.py`,
`store/passes.py`, `store/redis.py`) and in memory for unit tests
(`store/memory.py`). `ops` wires a concrete store to the engine.

Rows the store returns that the API renders as they are (a stream, a worker, an
event) stay `dict[str, Any]`; the records the engine reasons about are in
`domain/records.py` and `domain/models.py`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from streamorch.domain.models import Grant, Plan, Revoke, Snapshot
from streamorch.domain.records import Event, HeartbeatResult, StreamSpec

T = TypeVar("T")

# Runs a CPU-heavy pure function, in a worker thread or inline (core/engine.py).
Offload = Callable[..., Any]

# Rows of a pass's steps, as the store returns them (plain tuples: a pass at 100,000
# streams cannot afford an object per row). Worker ids are uuid.UUID or their text.
Released = tuple[str, Any]  # (stream, worker) released by an expiry
Finished = tuple[str, Any, Any, str]  # (stream, old owner, target or None, reason)
RevokeRow = tuple[str, Any, Any, str]  # (stream, worker, target or None, reason)
GrantRow = tuple[str, str, Any]  # (stream, worker, fencing token)


class PassTx(Protocol):
    """One reconcile pass's unit of work: every step runs in one transaction, which
    commits when the `async with` block ends normally and rolls back otherwise.

    A serialization conflict or deadlock raises `domain.errors.TransactionConflict`
    (the whole pass may run again); any other store failure raises `StoreError`.
    """

    async def try_lock(self) -> bool:
        """Take the cluster-wide pass lock for this transaction; False if another holds it."""
        ...

    async def pass_gap(self) -> float | None:
        """Seconds since the last pass committed anywhere (None: never)."""
        ...

    async def grace_leases(self, ttl: float) -> int:
        """Give every live worker a lease of `ttl` from now; how many were extended."""
        ...

    async def expire(self, grace: float, alive: Sequence[Any]) -> tuple[list[Any], list[Released]]:
        """Expire live workers whose lease ended over `grace` s ago, except `alive`;
        release their streams and untarget moves to them. (expired ids, released)."""
        ...

    async def finish_moves(self) -> list[Finished]:
        """Release streams whose revoke the old owner acknowledged (acked_version ≥
        revoke_version) and no longer runs."""
        ...

    async def drained_workers(self, ids: Sequence[str]) -> list[Any]:
        """Which of the draining workers `ids` now own nothing."""
        ...

    async def generation(self) -> int:
        """The catalog/fleet generation: bumped by every change placement must consider."""
        ...

    async def snapshot(self) -> Snapshot:
        """Everything placement needs, read in this transaction."""
        ...

    async def recent_join_ages(self, horizon: float) -> list[float]:
        """Ages (s) of the live workers that registered within `horizon` s."""
        ...

    async def apply_revokes(self, revokes: Sequence[Revoke]) -> list[RevokeRow]:
        """Mark the streams as revoking (moving to their target, if any)."""
        ...

    async def insert_grants(self, grants: Sequence[Grant]) -> list[GrantRow]:
        """Write the grants, each with a new fencing token."""
        ...

    async def write_events(self, events: Sequence[Event]) -> None: ...

    async def touch(self, worker_ids: Iterable[Any]) -> set[str]:
        """Bump the version of these workers and notify them at commit; their ids as text."""
        ...

    async def stamp_revokes(self, keys: Sequence[str]) -> None:
        """Record, after the version bump, which owner version first lacks these streams."""
        ...

    async def next_expiry(self, grace: float, alive: Sequence[Any]) -> float | None:
        """Seconds until the earliest live lease (not in `alive`) ends, `grace` included."""
        ...

    async def note_pass(self) -> None:
        """Record that a pass ran now (read back by `pass_gap`); the last step."""
        ...


class EngineStore(Protocol):
    """The store the Orchestrator and the Reconciler use. Each method is one transaction."""

    # catalog
    async def upsert_stream(self, spec: StreamSpec) -> bool: ...
    async def get_stream(self, key: str) -> dict[str, Any] | None: ...
    async def list_streams(
        self,
        *,
        after: str,
        limit: int,
        state: str | None,
        worker: str | None,
        search: str | None = None,
    ) -> list[dict[str, Any]]: ...
    async def delete_stream(self, key: str) -> set[str]: ...
    async def bulk(
        self, specs: Sequence[StreamSpec], mode: str
    ) -> tuple[dict[str, int], set[str]]: ...

    # fleet
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
    ) -> tuple[dict[str, Any], set[str]]: ...
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
    ) -> HeartbeatResult: ...
    async def desired(self, worker_id: uuid.UUID) -> dict[str, Any]: ...
    async def worker_secret_hash(self, worker_id: uuid.UUID) -> bytes | None: ...
    async def version(self, worker_id: uuid.UUID) -> int: ...
    async def drain(self, worker_id: uuid.UUID) -> None: ...
    async def deregister(self, worker_id: uuid.UUID, *, force: bool) -> set[str]: ...
    async def list_workers(
        self, statuses: Sequence[str] | None = None, *, after: str = "", limit: int = 1000
    ) -> list[dict[str, Any]]: ...
    async def get_worker(
        self, *, name: str | None = None, worker_id: uuid.UUID | None = None
    ) -> dict[str, Any] | None: ...

    # cluster
    async def status(self) -> dict[str, Any]: ...
    async def events(
        self,
        *,
        since: int = 0,
        limit: int,
        stream: str | None,
        newest: bool = False,
        before: int | None = None,
    ) -> list[dict[str, Any]]: ...

    # placement
    async def placement_snapshot(self, offload: Offload) -> Snapshot:
        """A snapshot read in its own transaction; built with `offload`."""
        ...

    def pending_workers(self) -> list[Any]:
        """Workers whose heartbeat this process received but has not written yet."""
        ...

    def pass_tx(self, offload: Offload) -> AbstractAsyncContextManager[PassTx]:
        """One reconcile pass's transaction; CPU-heavy row work runs through `offload`."""
        ...


class Notifier(Protocol):
    """Wakes the workers whose desired set changed (and the long-polls waiting for them),
    here and on every replica (store/redis.py: PostgreSQL LISTEN/NOTIFY and Redis)."""

    listening: dict[str, bool]
    received: dict[str, int]

    async def publish(self, worker_ids: set[str]) -> None: ...
    def subscription(self, worker_id: str) -> AbstractAsyncContextManager[asyncio.Event]:
        """Register before reading the version, so no change can slip in between."""
        ...

    def release_all(self) -> None:
        """Shutdown: let every long-poll answer now."""
        ...

    def start(self) -> None: ...
    async def stop(self) -> None: ...


class RetentionStore(Protocol):
    """Forgetting departed workers and old events, batch by batch (core/retention.py)."""

    async def forget_departed(self, *, older_than_s: float, limit: int) -> list[str] | None: ...
    async def forget(self, worker_id: uuid.UUID) -> str: ...
    async def purge_events(
        self, *, max_age_s: float | None, max_count: int | None, limit: int
    ) -> int | None: ...
    async def table_sizes(self) -> dict[str, dict[str, int]]: ...


class CompatStore(Protocol):
    """The original protocol's instances and hand-outs (core/compat.py)."""

    async def instance(self, name: str) -> dict[str, Any] | None: ...
    async def mark_original(
        self, worker_id: uuid.UUID, *, generation: str, metrics: dict[str, Any]
    ) -> list[str]: ...
    async def beat(
        self, name: str, *, metrics: dict[str, Any], generation: str | None, ttl: float
    ) -> bool: ...
    async def recover(self, worker_id: uuid.UUID) -> tuple[list[str], list[str]]: ...
    async def pool_exists(self) -> bool: ...
    async def hand_out(
        self, worker_id: uuid.UUID, *, limit: int, from_pool: bool, once: bool = False
    ) -> tuple[list[str], dict[str, Any] | None]: ...
    async def release(self, worker_id: uuid.UUID, keys: list[str]) -> list[str]: ...
    async def instances(self, name: str | None = None) -> list[dict[str, Any]]: ...
    async def assignments(self) -> list[dict[str, Any]]: ...
    async def urls(self, keys: list[str]) -> dict[str, str]: ...


class DashboardReads(Protocol):
    """The dashboard's bounded reads that the engine has no call for (api/ui)."""

    async def recent_events(
        self,
        *,
        limit: int,
        after: int = 0,
        before: int | None = None,
        kind: str | None = None,
        stream: str | None = None,
        worker: uuid.UUID | None = None,
    ) -> list[dict[str, Any]]: ...
    async def activity(self) -> list[dict[str, Any]]: ...
    async def live_instances(self, labels: dict[str, str]) -> int: ...
    async def worker(self, worker_id: uuid.UUID) -> dict[str, Any] | None: ...
    async def worker_streams(
        self, worker_id: uuid.UUID, *, after: str, limit: int
    ) -> list[dict[str, Any]]: ...


# Reads the rows of an external stream catalog: (DSN, query) → rows (core/catalog_sync.py).
# Raises StoreError (or OSError) when the source cannot be read.
SourceFetch = Callable[[str, str], Awaitable[list[dict[str, Any]]]]


__all__ = [
    "CompatStore",
    "DashboardReads",
    "EngineStore",
    "Finished",
    "GrantRow",
    "Notifier",
    "Offload",
    "PassTx",
    "Plan",
    "Released",
    "RetentionStore",
    "RevokeRow",
    "SourceFetch",
]
