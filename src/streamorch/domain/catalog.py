"""A catalog row (a source database's row, or a file's record) as a stream: the key rule
and the row parser, shared by catalog sync (core/catalog_sync.py) and the CLI's import."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

# The stream key rule of API.md (the API checks it in api/schemas.py, the database in a CHECK).
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:/-]{1,200}$")


class RowError(ValueError):
    """A source row (or file record) that cannot become a stream."""


def stream_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One source row as a bulk-API stream: key, url, weight, labels, requires, enabled."""
    raw_key = row.get("key", row.get("id"))
    if raw_key is None or raw_key == "":
        raise RowError("no `key` or `id` column value")
    key = str(raw_key).strip()
    if not KEY_PATTERN.match(key):
        raise RowError(f"key {key[:80]!r} is invalid: use 1-200 letters, digits or ._:-/")
    url = str(row.get("url") or "").strip()
    if not url:
        raise RowError(f"stream {key!r}: no url")
    stream: dict[str, Any] = {"key": key, "url": url}
    weight = row.get("weight")
    if weight not in (None, ""):
        try:
            stream["weight"] = int(weight)
        except (TypeError, ValueError):
            raise RowError(f"stream {key!r}: weight {weight!r} is not a whole number") from None
        if stream["weight"] < 1:
            raise RowError(f"stream {key!r}: weight must be at least 1")
    for name in ("labels", "requires"):
        value = row.get(name)
        if value in (None, ""):
            continue
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise RowError(f"stream {key!r}: {name} is not JSON") from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise RowError(f"stream {key!r}: {name} must be an object of strings")
        stream[name] = value
    enabled = row.get("enabled")
    if enabled not in (None, ""):
        if isinstance(enabled, str):
            lowered = enabled.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "t", "f"):
                raise RowError(f"stream {key!r}: enabled {enabled!r} is not true or false")
            enabled = lowered in ("true", "1", "yes", "t")
        stream["enabled"] = bool(enabled)
    return stream


def streams_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every row as a stream; `RowError` naming the first problems if any row is bad."""
    streams, problems, seen = [], [], set()
    for number, row in enumerate(rows, start=1):
        try:
            stream = stream_from_row(row)
        except RowError as exc:
            problems.append(f"row {number}: {exc}")
            continue
        if stream["key"] in seen:
            problems.append(f"row {number}: key {stream['key']!r} appears twice")
        seen.add(stream["key"])
        streams.append(stream)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise RowError("; ".join(problems[:5]) + more)
    return streams
