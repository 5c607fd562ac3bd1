"""The control loop: one reconcile pass every RECONCILE_INTERVAL, or sooner when woken.

Every server process runs one; a pass takes a transaction-scoped advisory lock,
so replicas never run passes at the same time and a replica killed mid-pass
leaves nothing half-done (its transaction rolls back). A pass: expire lapsed
leases → finish moves whose old owner stopped → plan (place, drain, rebalance)
→ write grants and revokes → notify the workers concerned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from streamorch.core import engine
from streamorch.core.loop_lag import LoopLag
from streamorch.core.ports import EngineStore
from streamorch.domain.errors import StoreError
from streamorch.domain.models import Policy
from streamorch.domain.records import PassResult

log = logging.getLogger(__name__)

# Wake this long after the earliest lease ends (PostgreSQL must see it as ended), and
# never sooner than MIN_DELAY_S after a pass, so a lease about to end cannot spin the loop.
EXPIRY_MARGIN_S = 0.02
MIN_DELAY_S = 0.02
# After an unexpected error the loop starts again this long after (doubling up to the
# maximum): a bug met by one pass must not end failover here for good (ADR 0020).
RESTART_BACKOFF_S = (1.0, 60.0)


@dataclass
class ReconcilerStats:
    passes: int = 0
    planned_passes: int = 0
    last_pass_at: float | None = None  # time.time()
    last_duration_ms: float | None = None
    last_error: str | None = None
    grants: int = 0
    revokes: int = 0
    expired: int = 0
    unplaced: dict[str, str] = field(default_factory=dict)
    settling: bool = False  # the last planned pass waited for registrations to settle
    # "running", "failed" (an unexpected error ended the last run of the loop; it runs again
    # after a back-off and is "running" once a pass succeeds: docs/decisions/0020) or
    # "stopped".
    state: str = "stopped"
    fatal_error: str | None = None
    restarts: int = 0


class Reconciler:
    def __init__(
        self,
        store: EngineStore,
        policy: Policy,
        interval: float,
        on_touched: Callable[[set[str]], Awaitable[None]],
        lease_ttl: float = 10.0,
        lag: LoopLag | None = None,
        offload: engine.Offloader | None = None,
        restart_backoff_s: tuple[float, float] = RESTART_BACKOFF_S,
    ) -> None:
        self.store = store
        self.offload = offload or engine.Offloader()
        self.lease_ttl = lease_ttl
        self.lag = lag
        self.policy = policy
        self.interval = interval
        self.on_touched = on_touched
        self.restart_backoff_s = restart_backoff_s
        self.stats = ReconcilerStats()
        # Called after every pass that ran, with its result and duration (api/metrics.py).
        self.observers: list[Callable[[PassResult, float], None]] = []
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._seen_generation: int | None = None
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name="reconciler")

    async def _supervise(self) -> None:
        """`run()`, and again after a back-off when an unexpected error ended it.

        The error was logged with its traceback and health reports it; the data that
        triggered it may change (a stream edited, a worker gone), and meanwhile this
        server keeps answering heartbeats, so live workers keep their streams.
        """
        backoff, longest = self.restart_backoff_s
        while not self._stopping:
            # run() logged an unexpected error and marked the reconciler failed.
            with contextlib.suppress(Exception):
                await self.run()
            if self.stats.state != "failed":
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), backoff)
            backoff = min(backoff * 2, longest)
            if not self._stopping:
                self.stats.restarts += 1
                log.info(
                    "restarting the reconciler after an unexpected error",
                    extra={"action": "reconciler_restart", "restarts": self.stats.restarts},
                )

    async def stop(self, timeout: float = 5.0) -> None:
        """Let the pass under way finish (it is one short transaction), then end the loop."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:
            # A fatal error: run() logged it with its traceback and marked the reconciler
            # failed; stopping must not fail the shutdown of the server for it.
            log.debug("the reconciler had failed before it was stopped")

    async def run(self) -> None:
        """Pass after pass until `stop()`.

        A store failure (database away, pool exhausted) is retried with back-off. Any
        other exception is a bug: it is logged with its traceback, marks the reconciler
        failed at once (health reports it), and is re-raised; `start()`'s supervisor runs
        the loop again after a back-off (docs/decisions/0020-fatal-reconciler-errors.md).
        """
        if self.stats.state != "failed":  # failed stays visible until a pass succeeds
            self.stats.state = "running"
        try:
            await self._loop()
        except asyncio.CancelledError:
            self.stats.state = "stopped"
            raise
        except Exception as exc:
            self.stats.state = "failed"
            self.stats.fatal_error = self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception(
                "the reconciler stopped on an unexpected error; it starts again after a back-off",
                extra={"action": "reconciler_failed"},
            )
            raise
        self.stats.state = "stopped"

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            delay = self.interval
            try:
                result = await self.run_once()
                failures = 0
                if self.stats.state == "failed" and result.ran:
                    self.stats.state = "running"
                    log.info(
                        "the reconciler is running again", extra={"action": "reconciler_recovered"}
                    )
                delay = self.next_delay(result)
            except (StoreError, OSError) as exc:
                failures += 1
                self.stats.last_error = str(exc)
                log.warning(
                    "reconcile pass failed: %s",
                    exc,
                    extra={"action": "reconcile_failed", "failures": failures},
                )
                # Back off while the database is away: no busy loop.
                delay = min(self.interval * 2**failures, 10.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()

    def next_delay(self, result: PassResult) -> float:
        """One interval, or less when a lease ends sooner: a dead worker's streams move
        as soon as its lease has ended, not up to an interval later."""
        delay = self.interval
        if result.next_expiry_s is not None:
            delay = min(delay, result.next_expiry_s + EXPIRY_MARGIN_S)
        if result.settle_s > 0:  # place as soon as the fleet has settled
            delay = min(delay, result.settle_s + EXPIRY_MARGIN_S)
        return max(MIN_DELAY_S, delay)

    def expiry_grace_s(self) -> float:
        """How long past its end a lease is still given: this server's recent lag (I9).

        Capped at one lease: a longer stall is an outage, which the pass's outage rule
        (half a lease without a pass extends every lease) already covers.
        """
        if self.lag is None:
            return 0.0
        return min(self.lag.recent_max_s(self.lease_ttl), self.lease_ttl)

    async def run_once(self) -> PassResult:
        started = time.perf_counter()
        result = await engine.reconcile_pass(
            self.store,
            self.policy,
            self._seen_generation,
            lease_ttl=self.lease_ttl,
            expiry_grace_s=self.expiry_grace_s(),
            offload=self.offload,
        )
        if result.graced:
            log.warning(
                "no reconcile pass ran for over half a lease: extended %d leases instead of "
                "expiring workers that could not reach us",
                result.graced,
                extra={"action": "leases_extended"},
            )
        if not result.ran:
            return result
        # Remember the generation only once planning has nothing left to do, so a
        # pass limited by MAX_MOVES_PER_PASS, with moves in flight or waiting for the
        # fleet to settle is followed by more.
        if result.planned:
            settled = result.plan.empty and result.settle_s == 0
            self._seen_generation = result.generation if settled else None
            self.stats.unplaced = result.plan.unplaced
            self.stats.settling = result.settle_s > 0
            self.stats.planned_passes += 1
        duration = round((time.perf_counter() - started) * 1000, 2)
        stats = self.stats
        stats.passes += 1
        stats.last_pass_at = time.time()
        stats.last_duration_ms = duration
        stats.last_error = None
        stats.grants += len(result.plan.grants)
        stats.revokes += len(result.plan.revokes)
        stats.expired += len(result.expired)
        for observe in self.observers:
            observe(result, duration)
        if result.expired or not result.plan.empty or result.finished:
            log.info(
                "reconcile pass: %d granted, %d revoked, %d moves finished, %d workers expired",
                len(result.plan.grants),
                len(result.plan.revokes),
                result.finished,
                len(result.expired),
                extra={
                    "action": "reconcile_pass",
                    "duration_ms": duration,
                    "unplaced": len(result.plan.unplaced),
                },
            )
        if result.touched:
            await self.on_touched(result.touched)
        return result
