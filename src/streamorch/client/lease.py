"""The worker's clock arithmetic: retry backoff and the self-fencing deadline (I3)."""

from __future__ import annotations

from collections.abc import Callable


def backoff(attempt: int, max_backoff: float, rand: Callable[[], float]) -> float:
    """Capped exponential backoff with full jitter on the upper half.

    The cap doubles with each `attempt` from 0.1 s up to `max_backoff`; the delay is
    drawn between half the cap and the cap (`rand()` is uniform in [0, 1)).
    """
    cap = min(max_backoff, 0.05 * 2.0 ** min(attempt, 16))
    return cap / 2 + rand() * cap / 2


def fence_at(renewed: float, lease_ttl: float, fence_margin: float) -> float:
    """When a worker whose last renewal was *sent* at `renewed` must stop everything.

    Counting from the send time is never later than the server's own count, so the
    worker stops its streams before the server can give them to someone else.
    """
    return renewed + lease_ttl - fence_margin
