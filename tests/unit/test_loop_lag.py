"""The event-loop lag monitor, and the expiry grace the reconciler takes from it."""

from __future__ import annotations

import asyncio
import time

import pytest

from streamorch.core.loop_lag import NOISE_S, LoopLag
from streamorch.core.reconciler import Reconciler
from streamorch.domain.models import Policy

pytestmark = pytest.mark.anyio


async def _noop(_: set[str]) -> None:
    return None


async def test_a_blocked_loop_is_measured_while_and_after_it_is_blocked():
    lag = LoopLag(window_s=10.0, period_s=0.05)
    seen: list[float] = []
    lag.observers.append(seen.append)
    lag.start()
    try:
        while not seen:  # the first tick: the monitor's timer is set
            await asyncio.sleep(0.01)
        time.sleep(0.3)  # noqa: ASYNC251 -- the point: a synchronous step holds the loop
        during = lag.overdue_s()
        while len(seen) < 2 or max(seen) < NOISE_S:
            await asyncio.sleep(0.01)
    finally:
        await lag.stop()
    # The timer was due at most one period after the block began.
    assert during >= 0.3 - 0.05
    assert lag.recent_max_s() >= 0.3 - 0.05
    assert lag.recent_max_s(window_s=0.0) == 0.0  # outside a window of nothing


def test_the_expiry_grace_is_the_recent_lag_capped_at_one_lease():
    lag = LoopLag(window_s=10.0)
    reconciler = Reconciler(None, Policy(), 1.0, _noop, lease_ttl=10.0, lag=lag)  # type: ignore[arg-type]
    assert reconciler.expiry_grace_s() == 0.0
    lag.record(0.8)
    assert reconciler.expiry_grace_s() == 0.8
    lag.record(60.0)
    assert reconciler.expiry_grace_s() == 10.0
    lag.record(0.001)  # noise is not remembered as a stall
    assert lag.last_s == 0.001
    assert reconciler.expiry_grace_s() == 10.0
