"""The records the store hands back to the engine: plain data, no I/O.

They live here, below both the engine (core) and its adapters (store), so that
neither has to import the other to speak about a stream, an event, a heartbeat's
answer or a reconcile pass's outcome.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from streamorch.domain import credentials
from streamorch.domain.errors import LeaseExpired, NotFound, Superseded
from streamorch.domain.models import Plan


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
    worker: Any = None  # a worker id (uuid.UUID or its text), or None
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
        loaded: list[dict[str, Any]] = json.loads(self.assignments_json)
        return loaded


def heartbeat_result(
    row: dict[str, Any] | None, worker_id: Any, incarnation: int
) -> HeartbeatResult:
    """The answer to a heartbeat from the worker's row after it (the `heartbeats`
    statement's columns), or the error that refused it."""
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
            "the lease expired (or the worker was removed): stop every stream and register again",
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
