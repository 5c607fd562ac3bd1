"""Request and response bodies of API v1 (API.md), with the validation rules of I8."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

KEY_PATTERN = r"^[A-Za-z0-9._:/-]{1,200}$"
NAME_PATTERN = r"^[A-Za-z0-9._:-]{1,200}$"
LABEL_KEY_PATTERN = r"^[A-Za-z0-9._/-]{1,63}$"
MAX_LABELS = 32
MAX_LABEL_VALUE = 255
MAX_RUNNING = 10_000
MAX_BULK = 200_000

StreamKey = Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
WorkerName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Url = Annotated[str, StringConstraints(min_length=1, max_length=2048, strip_whitespace=True)]


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    import re

    if len(value) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels, got {len(value)}")
    for key, val in value.items():
        if not re.match(LABEL_KEY_PATTERN, key):
            raise ValueError(f"label key {key[:80]!r} must be 1-63 letters, digits or ._/-")
        if len(val) > MAX_LABEL_VALUE:
            raise ValueError(f"label {key!r}: value longer than {MAX_LABEL_VALUE} characters")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class StreamBody(Strict):
    url: Url
    weight: int = Field(1, ge=1, le=1_000_000)
    labels: dict[str, str] = Field(default_factory=dict)
    requires: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True

    _labels = field_validator("labels", "requires")(_check_labels)


class BulkStream(StreamBody):
    key: StreamKey


class BulkBody(Strict):
    streams: list[BulkStream] = Field(max_length=MAX_BULK)
    mode: Literal["upsert", "replace"] = "upsert"

    @field_validator("streams")
    @classmethod
    def _unique(cls, streams: list[BulkStream]) -> list[BulkStream]:
        seen: set[str] = set()
        duplicates = []
        for stream in streams:
            if stream.key in seen:
                duplicates.append(stream.key)
            seen.add(stream.key)
        if duplicates:
            raise ValueError(f"duplicate keys: {', '.join(sorted(set(duplicates))[:10])}")
        return streams


class RegisterBody(Strict):
    name: WorkerName
    capacity: int = Field(20, ge=1, le=1_000_000)
    labels: dict[str, str] = Field(default_factory=dict)
    address: str | None = Field(None, max_length=512)

    _labels = field_validator("labels")(_check_labels)


class HeartbeatBody(Strict):
    incarnation: int = Field(ge=1)
    running: list[StreamKey] = Field(default_factory=list, max_length=MAX_RUNNING)
    # The version of the last desired set the worker applied: `running` reflects it.
    # Moves off this worker finish only on reports that acknowledge the revoke.
    version: int | None = Field(None, ge=0)
    status: Literal["active", "draining"] = "active"
    metrics: dict[str, Any] = Field(default_factory=dict)


class AssignmentOut(BaseModel):
    stream: str
    url: str
    weight: int
    token: int


class DesiredOut(BaseModel):
    lease_expires_at: datetime
    version: int
    incarnation: int
    assignments: list[AssignmentOut]
    heartbeat_interval_s: float
    lease_ttl_s: float
    status: str


class RegisteredOut(BaseModel):
    worker_id: str
    name: str
    incarnation: int
    heartbeat_interval_s: float
    lease_ttl_s: float
    lease_expires_at: datetime
    kept_streams: int
