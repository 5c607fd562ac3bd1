"""Request and response bodies of API v1 (docs/reference/worker-protocol.md), with the
validation rules of I8.

Validation rejects everything PostgreSQL cannot store, so that a bad value is the
client's 422 naming the field, never a database error: no NUL character in any
string (PostgreSQL text cannot hold it), no NaN or infinity (JSON and jsonb cannot),
no integer outside 64 bits (bigint cannot).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

KEY_PATTERN = r"^[A-Za-z0-9._:/-]{1,200}$"
# A key may not end in this: `GET /v1/streams/{key}/explain` would be ambiguous.
RESERVED_KEY_SUFFIX = "/explain"
NAME_PATTERN = r"^[A-Za-z0-9._:-]{1,200}$"
CURSOR_PATTERN = r"^[A-Za-z0-9._:/-]{0,200}$"
LABEL_KEY_PATTERN = r"^[A-Za-z0-9._/-]{1,63}$"
MAX_LABELS = 32
MAX_LABEL_VALUE = 255
MAX_RUNNING = 10_000
MAX_BULK = 200_000
MAX_METRICS = 256
MAX_METRICS_DEPTH = 8
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

_KEY = re.compile(KEY_PATTERN)
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)


def key_problem(key: str) -> str | None:
    """Why `key` is not a valid stream key, or None when it is."""
    if not _KEY.fullmatch(key):
        return f"stream key {key[:80]!r} is invalid: use 1-200 letters, digits or ._:-/"
    if key.endswith(RESERVED_KEY_SUFFIX):
        return (
            f"stream key {key[:80]!r} is invalid: a key may not end in {RESERVED_KEY_SUFFIX!r} "
            "(GET /v1/streams/{key}/explain reads the explanation of a stream)"
        )
    return None


def _stream_key(value: str) -> str:
    problem = key_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000): PostgreSQL cannot store it")
    return value


StreamKey = Annotated[str, StringConstraints(pattern=KEY_PATTERN), AfterValidator(_stream_key)]
WorkerName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Url = Annotated[
    str,
    StringConstraints(min_length=1, max_length=2048, strip_whitespace=True),
    AfterValidator(_no_nul),
]
Text = Annotated[str, AfterValidator(_no_nul)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels, got {len(value)}")
    for key, val in value.items():
        if not _LABEL_KEY.fullmatch(key):
            raise ValueError(f"label key {key[:80]!r} must be 1-63 letters, digits or ._/-")
        if len(val) > MAX_LABEL_VALUE:
            raise ValueError(f"label {key!r}: value longer than {MAX_LABEL_VALUE} characters")
        if "\x00" in val:
            raise ValueError(
                f"label {key!r}: value contains the NUL character (\\u0000), which PostgreSQL "
                "cannot store"
            )
    return value


def _json_problem(value: Any, path: str, depth: int) -> str | None:
    """What in a JSON value PostgreSQL's jsonb (and JSON itself) cannot hold, or None."""
    if isinstance(value, str):
        return f"{path}: contains the NUL character (\\u0000)" if "\x00" in value else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            return f"{path}: integer outside the 64-bit range"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path}: {value} is not a finite number"
    if depth >= MAX_METRICS_DEPTH:
        return f"{path}: nested deeper than {MAX_METRICS_DEPTH} levels"
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return f"{path or 'a key'}: a key contains the NUL character (\\u0000)"
            problem = _json_problem(item, f"{path}.{key[:80]}" if path else key[:80], depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            problem = _json_problem(item, f"{path}[{index}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{path}: not a JSON value"


def _check_metrics(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_METRICS:
        raise ValueError(f"at most {MAX_METRICS} metrics, got {len(value)}")
    problem = _json_problem(value, "", 0)
    if problem:
        raise ValueError(f"{problem}; send finite numbers, strings without NUL, or null")
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
    address: Text | None = Field(None, max_length=512)

    _labels = field_validator("labels")(_check_labels)


class HeartbeatBody(Strict):
    incarnation: int = Field(ge=1, le=INT64_MAX)
    running: list[StreamKey] = Field(default_factory=list, max_length=MAX_RUNNING)
    # The version of the last desired set the worker applied: `running` reflects it.
    # Moves off this worker finish only on reports that acknowledge the revoke.
    version: int | None = Field(None, ge=0, le=INT64_MAX)
    status: Literal["active", "draining"] = "active"
    metrics: dict[str, Any] = Field(default_factory=dict)

    _metrics = field_validator("metrics")(_check_metrics)


class ErrorDetail(BaseModel):
    code: str = Field(description="a stable slug, e.g. invalid_input, worker_not_found")
    message: str = Field(description="what is wrong and what to do")
    details: dict[str, Any] = Field(description="machine-readable context; may be empty")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of the API."""

    error: ErrorDetail


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
