"""Catalog sync: keep the stream catalog equal to the rows of a query on another database.

Every `STREAMS_SOURCE_INTERVAL` seconds the loop runs `STREAMS_SOURCE_QUERY` against
`STREAMS_SOURCE_DSN` (read-only) and hands the rows to the bulk path (`Orchestrator.bulk`,
one transaction), as `replace` (the source is authoritative) or `upsert`. The bulk path
only writes rows that differ, so a sync with nothing new changes nothing.

A failed sync never touches the catalog: an unreachable source, a failing query, an
invalid row, or (in `replace` mode) a query that returned no rows — which looks the same
as a source emptied by mistake — log a warning with a fix and keep what is there.

Columns: `key` or `id` (the stream key; an integer id becomes its decimal string, the id
the original instance protocol uses), `url`; optional `weight`, `labels`, `requires`
(JSON objects or JSON text) and `enabled`. Other columns are ignored (the row rule:
domain/catalog.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from streamorch.config import Settings
from streamorch.core.ports import SourceFetch
from streamorch.domain.catalog import RowError, streams_from_rows
from streamorch.domain.errors import StoreError
from streamorch.domain.records import StreamSpec

log = logging.getLogger(__name__)

Apply = Callable[[list[StreamSpec], str], Awaitable[dict[str, int]]]


@dataclass(frozen=True)
class SyncReport:
    rows: int
    created: int
    updated: int
    deleted: int

    @property
    def unchanged(self) -> int:
        return self.rows - self.created - self.updated


class SyncRefused(Exception):
    """The source answered, but its answer must not be applied; carries the fix."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


class CatalogSync:
    """The sync loop: `start()`, idempotent `stop()`, and `sync_once()` for one round."""

    def __init__(self, settings: Settings, apply: Apply, fetch: SourceFetch) -> None:
        assert settings.streams_source_dsn is not None
        self._dsn = settings.streams_source_dsn.get_secret_value()
        self.query = settings.streams_source_query
        self.interval = settings.streams_source_interval
        self.mode = settings.streams_source_mode
        self.allow_empty = settings.streams_source_allow_empty
        self._apply = apply
        self._fetch = fetch
        self._task: asyncio.Task[None] | None = None
        self.last_report: SyncReport | None = None
        self.last_error: str | None = None
        self.runs = 0

    async def fetch(self) -> list[dict[str, Any]]:
        return await self._fetch(self._dsn, self.query)

    async def sync_once(self) -> SyncReport:
        """Fetch, check and apply once; raises on any failure, leaving the catalog as it was."""
        try:
            rows = await self.fetch()
        except (StoreError, OSError) as exc:
            raise SyncRefused(
                f"the stream source cannot be read: {_describe(exc)}".strip(),
                "check STREAMS_SOURCE_DSN (host, port, database, user, password) and "
                "STREAMS_SOURCE_QUERY against the source database",
            ) from exc
        try:
            streams = streams_from_rows(rows)
        except RowError as exc:
            raise SyncRefused(
                f"the source returned invalid rows: {exc}",
                "fix those rows or STREAMS_SOURCE_QUERY (columns: key or id, url, optional "
                "weight, labels, requires, enabled)",
            ) from None
        if not streams and self.mode == "replace" and not self.allow_empty:
            raise SyncRefused(
                "the source returned no rows; a replace would delete every stream",
                "check STREAMS_SOURCE_QUERY; if the catalog really should be empty, set "
                "STREAMS_SOURCE_ALLOW_EMPTY=true",
            )
        specs = [
            StreamSpec(
                s["key"],
                s["url"],
                s.get("weight", 1),
                s.get("labels", {}),
                s.get("requires", {}),
                s.get("enabled", True),
            )
            for s in streams
        ]
        counts = await self._apply(specs, self.mode)
        return SyncReport(len(specs), counts["created"], counts["updated"], counts["deleted"])

    async def run_once(self) -> SyncReport | None:
        """One round that logs its outcome instead of raising (what the loop calls)."""
        started = time.monotonic()
        self.runs += 1
        try:
            report = await self.sync_once()
        except SyncRefused as exc:
            self._failed(str(exc), exc.fix)
            return None
        except (StoreError, OSError) as exc:  # the source was read; the catalog's store failed
            self._failed(
                f"the catalog could not be written: {_describe(exc)}".strip(),
                "the orchestrator's own PostgreSQL is failing (see GET /health); the next "
                "round tries again",
            )
            return None
        self.last_report, self.last_error = report, None
        log.info(
            "catalog sync: %d created, %d updated, %d deleted, %d unchanged (%s)",
            report.created,
            report.updated,
            report.deleted,
            report.unchanged,
            self.mode,
            extra={
                "action": "catalog_synced",
                "mode": self.mode,
                "rows": report.rows,
                # Not top-level keys: `created` is a LogRecord attribute already.
                "counts": {
                    "created": report.created,
                    "updated": report.updated,
                    "deleted": report.deleted,
                    "unchanged": report.unchanged,
                },
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return report

    def _failed(self, message: str, fix: str) -> None:
        self.last_error = message
        log.warning(
            "catalog sync skipped, the catalog is kept as it is: %s; fix: %s",
            message,
            fix,
            extra={"action": "catalog_sync_failed", "fix": fix},
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="catalog-sync")

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # e.g. the orchestrator's own database is down: try again later
                log.exception("catalog sync failed", extra={"action": "catalog_sync_error"})
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _describe(exc: Exception) -> str:
    """`Class: message`, naming the driver's class when a StoreError wraps one."""
    if isinstance(exc, StoreError) and exc.__cause__ is not None:
        return str(exc)  # the store's text already starts with the driver error's class
    return f"{type(exc).__name__}: {exc}"
