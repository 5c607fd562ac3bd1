"""Pinned workers (instances of the original protocol) in `domain/placement.py`: what
they hold never moves while they live, and placement never grants them anything."""

from __future__ import annotations

from streamorch.domain.models import Holding, Policy, Snapshot, StreamView, WorkerView
from streamorch.domain.placement import explain, plan

POLICY = Policy()


def old(wid: str, capacity: int = 10, **labels: str) -> WorkerView:
    return WorkerView(id=wid, capacity=capacity, labels=labels, name=wid, pinned=True)


def new(wid: str, capacity: int = 10, *, draining: bool = False, **labels: str) -> WorkerView:
    return WorkerView(id=wid, capacity=capacity, labels=labels, draining=draining, name=wid)


def snap(workers, streams, holdings) -> Snapshot:
    return Snapshot(
        workers={w.id: w for w in workers},
        streams={s.key: s for s in streams},
        assignments={k: Holding(k, w) for k, w in holdings.items()},
    )


def keys(n: int, start: int = 1) -> list[StreamView]:
    return [StreamView(str(i)) for i in range(start, start + n)]


def test_rebalance_moves_only_new_workers_streams():
    # The old instance holds 10, two new workers hold 0 and 4: only the new ones rebalance.
    held = {str(i): "old" for i in range(1, 11)} | {str(i): "a" for i in range(11, 15)}
    result = plan(snap([old("old"), new("a"), new("b")], keys(14), held), POLICY)
    assert result.grants == []
    assert {r.worker for r in result.revokes} == {"a"}
    assert all(r.reason == "rebalance" and r.target == "b" for r in result.revokes)
    assert len(result.revokes) == 2


def test_never_a_target_of_a_grant_or_a_move():
    # An empty old instance next to a full new worker and unassigned streams.
    result = plan(snap([old("old", 50), new("a", 2)], keys(5), {}), POLICY)
    assert {g.worker for g in result.grants} == {"a"}
    assert len(result.grants) == 2
    assert sorted(result.unplaced) == ["3", "4", "5"]
    assert "1 instance of the original protocol may take it when it pulls" in result.unplaced["3"]


def test_label_change_and_over_capacity_do_not_move_a_pinned_stream():
    streams = [StreamView("1", requires={"region": "eu"}), *keys(3, start=2)]
    held = {"1": "old", "2": "old", "3": "old", "4": "old"}
    # The instance lacks region=eu and holds 4 streams on a capacity of 2.
    result = plan(snap([old("old", 2), new("a", 10, region="eu")], streams, held), POLICY)
    assert result.revokes == []
    assert result.grants == []


def test_draining_does_not_move_a_pinned_stream():
    held = {"1": "old", "2": "old"}
    drained = WorkerView(id="old", capacity=10, draining=True, pinned=True, name="old")
    assert plan(snap([drained, new("a")], keys(2), held), POLICY).empty


def test_deleted_and_disabled_streams_are_revoked_without_a_target():
    streams = [StreamView("1"), StreamView("2", enabled=False)]
    held = {"1": "old", "2": "old", "3": "old"}  # 3 was deleted
    result = plan(snap([old("old"), new("a")], streams, held), POLICY)
    assert sorted((r.stream, r.target, r.reason) for r in result.revokes) == [
        ("2", None, "disabled"),
        ("3", None, "deleted"),
    ]


def test_a_pinned_streams_weight_counts_against_nobody_else():
    # New workers balance among themselves as if the old instance were not there.
    held = {str(i): "old" for i in range(1, 7)}
    result = plan(snap([old("old", 6), new("a", 3), new("b", 3)], keys(10), held), POLICY)
    placed = sorted((g.worker, g.stream) for g in result.grants)
    assert [w for w, _ in placed].count("a") == 2
    assert [w for w, _ in placed].count("b") == 2


def test_explain_says_the_stream_is_pinned():
    text = explain(snap([old("fp-1"), new("a")], keys(1), {"1": "fp-1"}), "1")
    assert "instance 'fp-1' of the original protocol" in text
    assert "pinned" in text
    assert "releases it or its lease expires" in text
