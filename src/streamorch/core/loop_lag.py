"""How late this process's event loop runs: the server's own slowness, measured.

A timer is set every PERIOD_S; how late it fires is the loop's lag at that moment
(a long synchronous step, CPU starvation, a garbage collection). A heartbeat that
reached the socket during such a stall waited at least that long to be read, so
the reconciler expires only leases that ended longer ago than the recent lag (I9),
and `/health` warns when the lag nears the lease margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

PERIOD_S = 0.05
# Lags below this are noise (timer granularity, an ordinary loop iteration); only
# larger ones are kept, so the history stays short.
NOISE_S = 0.005
HISTORY = 1024


class LoopLag:
    def __init__(self, window_s: float, period_s: float = PERIOD_S) -> None:
        self.window_s = window_s
        self.period_s = period_s
        self.last_s = 0.0
        self._due: float | None = None  # when the pending timer should fire
        self._stalls: deque[tuple[float, float]] = deque(maxlen=HISTORY)  # (at, lag)
        self._task: asyncio.Task[None] | None = None
        # Called with every measured lag (api/metrics.py).
        self.observers: list[Callable[[float], None]] = []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        while True:
            self._due = time.monotonic() + self.period_s
            await asyncio.sleep(self.period_s)
            self.record(max(0.0, time.monotonic() - self._due))

    def record(self, lag: float) -> None:
        self.last_s = lag
        if lag >= NOISE_S:
            self._stalls.append((time.monotonic(), lag))
        for observe in self.observers:
            observe(lag)

    def overdue_s(self) -> float:
        """How late the pending timer is right now (a stall still under way)."""
        if self._due is None:
            return 0.0
        return max(0.0, time.monotonic() - self._due)

    def recent_max_s(self, window_s: float | None = None) -> float:
        """The largest lag in the last `window_s` (default: the lease), ongoing stall included."""
        since = time.monotonic() - (self.window_s if window_s is None else window_s)
        recorded = max((lag for at, lag in self._stalls if at >= since), default=0.0)
        return max(recorded, self.overdue_s())
