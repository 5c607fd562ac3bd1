"""Letting an assembling fleet settle: the rule (domain/settle.py) and what placement
does while it holds (domain/placement.py)."""

from __future__ import annotations

import pytest

from streamorch.domain import settle
from streamorch.domain.models import Grant, Holding, Policy, Revoke, Snapshot
from streamorch.domain.placement import SETTLING, plan
from tests.unit.test_placement import stream, worker


@pytest.mark.parametrize(
    ("ages", "expected"),
    [
        ([], 0.0),  # no worker
        ([5.0, 9.0], 0.0),  # nobody registered lately
        ([0.1], 0.4),  # one registration: quiet 0.5 s after it
        ([0.1, 0.3, 0.6, 0.9], 0.4),  # a burst: quiet 0.5 s after its newest
        ([0.1, 0.3, 2.0], 0.4),  # 2.0 is before a quiet gap: not part of the burst
        ([0.1, 0.5, 0.9, 1.3, 1.7, 2.1, 2.5, 2.9], 0.1),  # a long burst: 3 s from its start
        ([0.2, 0.6, 1.0, 1.4, 1.8, 2.2, 2.6, 3.0], 0.0),  # past the bound
    ],
)
def test_placement_waits_for_quiet_registrations_within_a_bound(ages, expected):
    assert settle.remaining(ages, quiet_s=0.5, max_s=3.0) == pytest.approx(expected)


def test_no_quiet_period_never_waits():
    assert settle.remaining([0.0, 0.1], quiet_s=0.0, max_s=10.0) == 0.0


def test_while_settling_new_streams_wait_and_a_join_still_rebalances():
    workers = {w.id: w for w in (worker("a"), worker("b"), worker("c"))}
    streams = {s.key: s for s in (stream("s1"), stream("s2"), stream("s3"), stream("new"))}
    held = {k: Holding(k, "a") for k in ("s1", "s2", "s3")}  # a holds 3, b and c none
    result = plan(Snapshot(workers, streams, held, settling=True), Policy())
    assert result.grants == []
    assert result.unplaced == {"new": SETTLING}
    assert {r.reason for r in result.revokes} == {"rebalance"}
    # Once settled: placed.
    result = plan(Snapshot(workers, streams, held), Policy())
    assert [g.stream for g in result.grants] == ["new"]


def test_while_settling_finished_moves_and_drains_still_proceed():
    workers = {w.id: w for w in (worker("a", draining=True), worker("b"))}
    streams = {s.key: s for s in (stream("moving"), stream("held"))}
    snapshot = Snapshot(
        workers, streams, {"held": Holding("held", "a")}, preferred={"moving": "b"}, settling=True
    )
    result = plan(snapshot, Policy())
    assert result.grants == [Grant("moving", "b", "moved")]
    assert result.revokes == [Revoke("held", "a", "b", "drain")]
