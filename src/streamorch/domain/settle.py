"""Letting a fleet settle: no stream placed on the first members only to move a moment later.

While workers register one after another (a fleet starting, a scale-out), every
stream placed on the members present so far is moved again by the rebalancing that
follows each new member: started, stopped and started elsewhere. So placement of
unassigned streams waits, briefly and boundedly, until registrations have been quiet for
`quiet_s`, and never longer than `max_s` after the burst of registrations began.
"""

from __future__ import annotations

from collections.abc import Iterable


def remaining(joined_ago: Iterable[float], quiet_s: float, max_s: float) -> float:
    """Seconds placement should still wait; 0 to go ahead.

    `joined_ago`: seconds since each live worker registered. A burst is a run of
    registrations each less than `quiet_s` after the one before; it is settled once its
    newest is `quiet_s` old, or once its first is `max_s` old, whichever comes first.
    """
    ages = sorted(a for a in joined_ago if a >= 0)  # newest first
    if quiet_s <= 0 or not ages or ages[0] >= quiet_s:
        return 0.0
    start = ages[0]
    for age in ages[1:]:
        if age - start >= quiet_s:
            break  # a quiet gap: the burst began after it
        start = age
    return max(0.0, min(quiet_s - ages[0], max_s - start))
