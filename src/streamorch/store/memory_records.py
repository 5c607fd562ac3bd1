"""The rows of the in-memory store (store/memory.py): its tables as dataclasses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streamorch.domain.models import AssignmentState

LIVE = ("active", "draining")
WORKER_STATUSES = frozenset({"active", "draining", "expired", "left"})


def as_datetime(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


@dataclass
class WorkerRow:
    id: uuid.UUID
    name: str
    capacity: int
    labels: dict[str, str]
    address: str | None
    kind: str
    lease_expires_at: float
    secret_hash: bytes | None
    registered_at: float
    last_heartbeat: float
    incarnation: int = 1
    status: str = "active"
    running: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    acked_version: int | None = None
    generation: str | None = None


@dataclass
class StreamRow:
    key: str
    url: str
    weight: int
    labels: dict[str, str]
    requires: dict[str, str]
    enabled: bool
    created_at: float
    updated_at: float


@dataclass
class AssignmentRow:
    stream_key: str
    worker_id: uuid.UUID
    token: int
    reason: str
    since: float
    state: AssignmentState = "granted"
    target_id: uuid.UUID | None = None
    revoked_at: float | None = None
    revoke_version: int | None = None


@dataclass
class State:
    streams: dict[str, StreamRow] = field(default_factory=dict)
    workers: dict[uuid.UUID, WorkerRow] = field(default_factory=dict)
    assignments: dict[str, AssignmentRow] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    generation: int = 0
    last_pass_at: float | None = None
    next_token: int = 1
    next_event: int = 1
