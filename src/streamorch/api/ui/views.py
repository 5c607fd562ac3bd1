"""What the dashboard pages show, built from the orchestrator's own calls.

Pure shaping of rows for the templates (counts, ages, the activity chart); every read
goes through the `Orchestrator` (and its `dashboard` reads, bounded queries of their own).
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from streamorch.core import compat
from streamorch.core.ports import DashboardReads
from streamorch.core.service import Orchestrator

# The event kinds offered in the events filter (docs/reference/events.md has them all).
EVENT_KINDS = (
    "assigned",
    "moved",
    "revoked",
    "stopped",
    "worker_joined",
    "worker_rejoined",
    "worker_expired",
    "worker_left",
    "drain_started",
    "drained",
    "stream_created",
    "stream_updated",
    "stream_deleted",
    "catalog_bulk",
    "leases_extended",
)


def kind_of(labels: dict[str, Any]) -> str:
    """'original' for instances of the original protocol, 'sdk' for every other worker."""
    return "original" if all(labels.get(k) == v for k, v in compat.LABELS.items()) else "sdk"


def age(value: datetime | float | None, now: float | None = None) -> str:
    """'3 s ago', 'in 8 s', '2 h ago': short and readable at a glance."""
    if value is None:
        return "never"
    epoch = value.timestamp() if isinstance(value, datetime) else value
    delta = (now or time.time()) - epoch
    text = _span(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def _span(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else ""


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    count: int
    minute: int
    series: str


@dataclass(frozen=True)
class Chart:
    """The last hour's activity as SVG bars (rendered by templates/_chart.html)."""

    width: int
    height: int
    bars: list[Bar]
    peak: int
    totals: dict[str, int]


CHART_SERIES = ("assigned", "moved", "expired")


def chart(rows: list[dict[str, Any]], width: int = 600, height: int = 90) -> Chart:
    per_minute = {r["minute"]: r for r in rows if 0 <= r["minute"] < 60}
    peak = max(
        (per_minute[m][s] for m in per_minute for s in CHART_SERIES),
        default=0,
    )
    slot = width / 60
    bar_width = slot / len(CHART_SERIES)
    bars = []
    for minute, row in per_minute.items():
        x0 = width - (minute + 1) * slot  # now on the right
        for i, series in enumerate(CHART_SERIES):
            count = row[series]
            if not count:
                continue
            h = max(1.0, (height - 2) * count / peak)
            bars.append(
                Bar(
                    round(x0 + i * bar_width, 2),
                    round(height - h, 2),
                    round(h, 2),
                    count,
                    minute,
                    series,
                )
            )
    totals = {s: sum(r[s] for r in per_minute.values()) for s in (*CHART_SERIES, "revoked")}
    return Chart(width, height, bars, peak, totals)


def health(runtime: Any) -> dict[str, dict[str, Any]]:
    """PostgreSQL and Redis as the background monitors last saw them."""
    out = {}
    for name, label in (("postgresql", "PostgreSQL"), ("redis", "Redis")):
        monitor = runtime.monitors.get(name)
        last = monitor.last if monitor is not None else None
        if monitor is None and name == "redis" and runtime.redis is None:
            out[name] = {"label": label, "state": "off", "text": "not configured", "fix": None}
            continue
        if last is None:
            out[name] = {"label": label, "state": "unknown", "text": "not probed yet", "fix": None}
        elif last.ok:
            latency = last.latency_ms
            text = f"ready, {latency:.1f} ms" if latency is not None else "ready"
            out[name] = {"label": label, "state": "ok", "text": text, "fix": None}
        else:
            out[name] = {
                "label": label,
                "state": "bad",
                "text": (last.problem.message if last.problem else None) or "unavailable",
                "fix": last.problem.fix if last.problem else None,
            }
    return out


T = TypeVar("T")


class Shared(Generic[T]):
    """One value for every page open on this replica, computed at most once per `ttl` s.

    The fleet-wide aggregates (`/v1/status`'s counts and loads, the hour's activity)
    scan the assignments or the event log; however many overviews poll a replica, each
    is computed once per period, and concurrent requests wait for the same computation.
    """

    def __init__(self, ttl: float, compute: Callable[[], Awaitable[T]]) -> None:
        self.ttl = ttl
        self.compute = compute
        self._value: tuple[T] | None = None  # boxed: None until the first computation
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> T:
        value = self._value
        if value is not None and time.monotonic() < self._expires:
            return value[0]
        async with self._lock:
            value = self._value
            if value is None or time.monotonic() >= self._expires:
                value = self._value = (await self.compute(),)
                self._expires = time.monotonic() + self.ttl
        return value[0]


STATUS_TTL_S = 2.0  # below the pages' poll period: every poll sees a newer status
ACTIVITY_TTL_S = 30.0  # a chart of minutes


class Overview:
    """What the overview shows; the expensive parts shared between open pages."""

    def __init__(self, runtime: Any, orch: Orchestrator, store: DashboardReads) -> None:
        self.runtime = runtime
        self.store = store
        self.status = Shared(STATUS_TTL_S, self._status)
        self.activity = Shared(ACTIVITY_TTL_S, store.activity)
        self.orch = orch

    async def _status(self) -> tuple[dict[str, Any], int]:
        return await self.orch.status(), await self.store.live_instances(compat.LABELS)

    async def read(self) -> dict[str, Any]:
        status, instances = await self.status.get()
        return {
            "status": status,
            "instances": instances,
            "health": health(self.runtime),
            "events": await self.store.recent_events(limit=12),
        }

    async def chart(self) -> Chart:
        return chart(await self.activity.get())


class Fleet:
    """The worker list (`Orchestrator.workers`), shared between open workers pages."""

    def __init__(self, orch: Orchestrator) -> None:
        self.lists = {
            status: Shared(
                STATUS_TTL_S, functools.partial(orch.workers, None if status is None else [status])
            )
            for status in (None, "active", "draining", "expired", "left")
        }

    async def rows(self, status: str | None) -> list[dict[str, Any]]:
        return await self.lists[status].get()


def parse_uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
