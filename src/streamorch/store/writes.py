"""Writes every store transaction ends with: events, version bumps and notifications,
revoke stamps, generation bumps. Each runs on the caller's connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg

from streamorch.domain.records import Event
from streamorch.store.queries import sql

T = TypeVar("T")
# Below this many rows, CPU work stays on the event loop: a thread hop costs more.
OFFLOAD_MIN_ROWS = 1000

Offload = Callable[..., Awaitable[Any]]


async def _to_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


async def events(
    conn: psycopg.AsyncConnection[Any], events: Sequence[Event], offload: Offload = _to_thread
) -> None:
    if not events:
        return
    if len(events) < OFFLOAD_MIN_ROWS:
        params = event_params(events)
    else:  # a large pass's events: encoding them is seconds of CPU at 100,000
        params = await offload(event_params, events)
    await conn.execute(sql("insert_events"), params)


async def touch(conn: psycopg.AsyncConnection[Any], worker_ids: Iterable[Any]) -> set[str]:
    """Bump the version of workers whose desired set changed, and notify at commit."""
    ids = sorted({str(w) for w in worker_ids if w is not None})
    if ids:
        await conn.execute(sql("bump_versions"), {"ids": ids})
        for chunk in chunks(ids, 200):  # pg_notify payloads are limited to 8000 bytes
            await conn.execute(sql("notify"), {"payload": ",".join(chunk)})
    return set(ids)


async def stamp_revokes(conn: psycopg.AsyncConnection[Any], keys: Sequence[str]) -> None:
    """Record, after the version bump, which owner version first lacks these streams."""
    if keys:
        await conn.execute(sql("stamp_revokes"), {"keys": list(keys)})


async def bump_generation(conn: psycopg.AsyncConnection[Any]) -> None:
    """Record a change that placement must look at."""
    await conn.execute(sql("bump_generation"))


def event_params(events: Sequence[Event]) -> dict[str, list[Any]]:
    """The `insert_events` statement's parameters."""
    return {
        "kinds": [e.kind for e in events],
        "streams": [e.stream for e in events],
        "workers": [None if e.worker is None else str(e.worker) for e in events],
        "reasons": [e.reason for e in events],
        "details": [json.dumps(e.details) for e in events],
    }


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
