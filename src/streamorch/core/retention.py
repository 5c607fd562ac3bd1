"""Retention: departed workers and old events are deleted, so history stays bounded.

Without it two tables only grow: every worker that ever registered stays as `left` or
`expired`, and every change adds events (about 200 per worker replaced). Every
`RETENTION_INTERVAL` the loop

* forgets workers that departed more than `WORKER_RETENTION` ago (their events keep
  the name), and
* deletes events older than `EVENT_RETENTION`, and beyond the newest `EVENT_MAX_COUNT`.

Work goes in batches of `RETENTION_BATCH_SIZE` rows, each one short transaction, with a
pause between batches: deletes never hold locks or I/O long enough to delay heartbeats,
and autovacuum reclaims the space as it goes. Every server process runs the loop; a
batch takes a transaction-scoped advisory lock, so replicas never delete at the same
time and a replica that dies mid-batch leaves nothing half-done. A setting of 0 keeps
that history forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from streamorch.config import Settings
from streamorch.core.ports import RetentionStore
from streamorch.domain.errors import StoreError

log = logging.getLogger(__name__)

# Between two batches of one round: lets heartbeats and passes in between, and keeps
# the write rate of a catch-up (a first start on months of history) modest.
BATCH_PAUSE_S = 0.05


@dataclass
class RetentionReport:
    """One round: what was deleted, and whether another replica had the lock."""

    workers: int = 0
    events: int = 0
    skipped: bool = False


@dataclass
class RetentionStats:
    rounds: int = 0
    workers: int = 0
    events: int = 0
    last_round_at: float | None = None  # time.time()
    last_error: str | None = None


class Retention:
    """The retention loop: `start()`, idempotent `stop()`, `run_once()` for one round."""

    def __init__(
        self,
        store: RetentionStore,
        settings: Settings,
        *,
        pause: float = BATCH_PAUSE_S,
    ) -> None:
        self.store = store
        self.worker_retention = settings.worker_retention or None
        self.event_retention = settings.event_retention or None
        self.event_max_count = settings.event_max_count or None
        self.interval = settings.retention_interval
        self.batch = settings.retention_batch_size
        self.pause = pause
        self.stats = RetentionStats()
        # Called after every round with its report (api/metrics.py).
        self.observers: list[Callable[[RetentionReport], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return bool(self.worker_retention or self.event_retention or self.event_max_count)

    def start(self) -> None:
        if self._task is None and self.enabled:
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="retention")

    async def stop(self, timeout: float = 5.0) -> None:
        """End the loop after the batch under way (one short transaction)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            delay = self.interval
            try:
                await self.run_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except (StoreError, OSError) as exc:
                failures += 1
                self.stats.last_error = str(exc)
                log.warning(
                    "retention round failed: %s",
                    exc,
                    extra={"action": "retention_failed", "failures": failures},
                )
                delay = min(self.interval, 5.0 * 2**failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def run_once(self) -> RetentionReport:
        """Delete everything due, batch by batch, until nothing is left or stop() is called."""
        report = RetentionReport()
        if self.worker_retention is not None:
            await self._batches(report, "workers", self._forget_batch)
        if not report.skipped and (self.event_retention or self.event_max_count):
            await self._batches(report, "events", self._purge_batch)
        stats = self.stats
        stats.rounds += 1
        stats.workers += report.workers
        stats.events += report.events
        stats.last_round_at = time.time()
        stats.last_error = None
        if report.workers or report.events:
            log.info(
                "retention: forgot %d departed worker(s), deleted %d event(s)",
                report.workers,
                report.events,
                extra={"action": "retention_round"},
            )
        for observe in self.observers:
            observe(report)
        return report

    async def _batches(
        self, report: RetentionReport, what: str, batch: Callable[[], Awaitable[int | None]]
    ) -> None:
        while not self._stopping.is_set():
            done = await batch()
            if done is None:
                report.skipped = True  # another replica is at it
                return
            setattr(report, what, getattr(report, what) + done)
            if done < self.batch:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.pause)

    async def _forget_batch(self) -> int | None:
        assert self.worker_retention is not None
        names = await self.store.forget_departed(
            older_than_s=self.worker_retention, limit=self.batch
        )
        return None if names is None else len(names)

    async def _purge_batch(self) -> int | None:
        return await self.store.purge_events(
            max_age_s=self.event_retention, max_count=self.event_max_count, limit=self.batch
        )
