"""What the orchestrator tells a worker, as typed values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Assignment:
    """A stream the worker should run, with the fencing token of its grant.

    Pass `token` to downstream systems so that writes from an older owner can be
    rejected; it grows with every grant of the stream.
    """

    stream: str
    url: str
    weight: int = 1
    token: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Assignment:
        """From one item of an answer's `assignments`."""
        return cls(str(data["stream"]), str(data["url"]), int(data["weight"]), int(data["token"]))


@dataclass(frozen=True)
class Desired:
    """One heartbeat or long-poll answer: the full set to run now, at `version`."""

    version: int
    incarnation: int | None
    assignments: dict[str, Assignment]
    status: str = "active"
    heartbeat_interval_s: float | None = None
    lease_ttl_s: float | None = None
    lease_expires_at: datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Desired:
        """From a heartbeat or long-poll answer."""
        items = [Assignment.from_json(a) for a in data.get("assignments", [])]
        expires = data.get("lease_expires_at")
        return cls(
            version=int(data["version"]),
            incarnation=data.get("incarnation"),
            assignments={a.stream: a for a in items},
            status=str(data.get("status", "active")),
            heartbeat_interval_s=data.get("heartbeat_interval_s"),
            lease_ttl_s=data.get("lease_ttl_s"),
            lease_expires_at=datetime.fromisoformat(expires) if expires else None,
        )


@dataclass(frozen=True)
class Registration:
    """The answer to a registration: who this worker is now and the timings it must keep.

    `incarnation` grows with each registration under the same `name`; `kept_streams`
    counts the streams a restart within the lease kept (granted again, new tokens).
    """

    worker_id: str
    name: str
    incarnation: int
    heartbeat_interval_s: float
    lease_ttl_s: float
    kept_streams: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Registration:
        """From the answer to `POST /v1/workers/register`."""
        return cls(
            worker_id=str(data["worker_id"]),
            name=str(data["name"]),
            incarnation=int(data["incarnation"]),
            heartbeat_interval_s=float(data["heartbeat_interval_s"]),
            lease_ttl_s=float(data["lease_ttl_s"]),
            kept_streams=int(data.get("kept_streams") or 0),
        )
