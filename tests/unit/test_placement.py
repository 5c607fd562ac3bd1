"""Concrete cases for each rule of `domain/placement.py`."""

from __future__ import annotations

import random

import pytest

from streamorch.domain.models import (
    Grant,
    Holding,
    Plan,
    Policy,
    Revoke,
    Snapshot,
    StreamView,
    WorkerView,
)
from streamorch.domain.placement import explain, plan

POLICY = Policy()


def worker(wid: str, capacity: int = 10, *, draining: bool = False, **labels: str) -> WorkerView:
    return WorkerView(id=wid, capacity=capacity, labels=labels, draining=draining)


def stream(key: str, weight: int = 1, *, enabled: bool = True, **requires: str) -> StreamView:
    return StreamView(key=key, weight=weight, requires=requires, enabled=enabled)


def snapshot(
    workers: list[WorkerView],
    streams: list[StreamView],
    holdings: dict[str, str] | None = None,
    *,
    revoking: list[Holding] | None = None,
    preferred: dict[str, str] | None = None,
) -> Snapshot:
    """`holdings`: stream key → worker id (granted); `revoking`: in-flight holdings."""
    assignments = {k: Holding(stream=k, worker=w) for k, w in (holdings or {}).items()}
    for h in revoking or []:
        assignments[h.stream] = h
    return Snapshot(
        workers={w.id: w for w in workers},
        streams={s.key: s for s in streams},
        assignments=assignments,
        preferred=dict(preferred or {}),
    )


def granted_to(p: Plan) -> dict[str, str]:
    return {g.stream: g.worker for g in p.grants}


def loads_after(snap: Snapshot, p: Plan) -> dict[str, int]:
    """owned (granted or revoking) + reserved + granted, per live worker."""
    weight = {k: s.weight for k, s in snap.streams.items()}
    loads = dict.fromkeys(snap.workers, 0)
    for h in snap.assignments.values():
        if h.worker in loads:
            loads[h.worker] += weight.get(h.stream, 1)
            if h.state == "revoking" and h.target in loads:
                loads[h.target] += weight.get(h.stream, 1)
    for g in p.grants:
        loads[g.worker] += weight[g.stream]
    for r in p.revokes:
        if r.target is not None:
            loads[r.target] += weight[r.stream]
    return loads


# -- placement of unassigned streams ----------------------------------------------


def test_empty_fleet_and_catalog_give_an_empty_plan() -> None:
    p = plan(snapshot([], []), POLICY)
    assert p.empty
    assert p.unplaced == {}


def test_heaviest_streams_are_placed_first() -> None:
    # Lightest first would put "a" on w1 and leave no worker with room for "c".
    snap = snapshot(
        [worker("w1", 5), worker("w2", 5)], [stream("a", 1), stream("b", 4), stream("c", 5)]
    )
    p = plan(snap, POLICY)
    assert p.grants == [
        Grant("c", "w1", "placed"),
        Grant("b", "w2", "placed"),
        Grant("a", "w2", "placed"),
    ]
    assert p.unplaced == {}


def test_placement_picks_lowest_utilisation_after_placement() -> None:
    # Before placement w2 is emptier (0/3 < 3/10); after it w1 is (5/10 < 2/3).
    snap = snapshot(
        [worker("w1", 10), worker("w2", 3)],
        [stream("x", 1), stream("y", 1), stream("z", 1), stream("new", 2)],
        {"x": "w1", "y": "w1", "z": "w1"},
    )
    assert granted_to(plan(snap, POLICY)) == {"new": "w1"}


def test_utilisation_ties_go_to_the_lowest_worker_id() -> None:
    # 5/10 after placement on both.
    snap = snapshot(
        [worker("w2", 4), worker("w1", 10)],
        [stream(f"h{i}", 1) for i in range(5)] + [stream("new", 1)],
        {"h0": "w1", "h1": "w1", "h2": "w1", "h3": "w1", "h4": "w2"},
    )
    assert granted_to(plan(snap, POLICY)) == {"new": "w1"}


def test_streams_spread_evenly_over_equal_workers() -> None:
    snap = snapshot(
        [worker(f"w{i}", 10) for i in range(3)], [stream(f"s{i:02}") for i in range(12)]
    )
    p = plan(snap, POLICY)
    counts = {w: list(granted_to(p).values()).count(w) for w in ("w0", "w1", "w2")}
    assert counts == {"w0": 4, "w1": 4, "w2": 4}


def test_requires_are_honoured_even_when_the_eligible_worker_is_busier() -> None:
    snap = snapshot(
        [worker("us", 10, region="us"), worker("eu", 10, region="eu", gpu="yes")],
        [stream("old", 5), stream("new", 1, region="eu"), stream("gpu", 1, gpu="yes")],
        {"old": "eu"},
    )
    assert granted_to(plan(snap, POLICY)) == {"new": "eu", "gpu": "eu"}


def test_capacity_is_never_exceeded() -> None:
    snap = snapshot(
        [worker("w1", 4), worker("w2", 4)],
        [stream("a", 3), stream("b", 3), stream("c", 2)],
    )
    p = plan(snap, POLICY)
    assert set(granted_to(p)) == {"a", "b"}
    assert "c" in p.unplaced
    assert all(load <= 4 for load in loads_after(snap, p).values())


def test_disabled_streams_are_not_placed_or_listed_as_unplaced() -> None:
    p = plan(snapshot([worker("w1")], [stream("off", enabled=False)]), POLICY)
    assert p.empty
    assert p.unplaced == {}


def test_holding_on_a_worker_that_is_not_live_is_placed_anew_not_revoked() -> None:
    snap = snapshot([worker("w2")], [stream("a")], {"a": "gone"})
    p = plan(snap, POLICY)
    assert p.grants == [Grant("a", "w2", "placed")]
    assert p.revokes == []


# -- preferred targets (finished moves) ---------------------------------------------


def test_preferred_target_is_used_even_when_another_worker_is_emptier() -> None:
    snap = snapshot(
        [worker("w1"), worker("w2")],
        [stream("x", 3), stream("m", 1)],
        {"x": "w2"},
        preferred={"m": "w2"},
    )
    assert plan(snap, POLICY).grants == [Grant("m", "w2", "moved")]


def test_preferred_targets_are_served_before_heavier_streams() -> None:
    # The heavier "big" would take w2's last room if it went first.
    snap = snapshot(
        [worker("w1", 2), worker("w2", 2)],
        [stream("m", 2), stream("big", 2), stream("x", 1)],
        {"x": "w1"},
        preferred={"m": "w2"},
    )
    p = plan(snap, POLICY)
    assert p.grants == [Grant("m", "w2", "moved")]
    assert "big" in p.unplaced


@pytest.mark.parametrize(
    ("target", "why"),
    [
        (worker("w2", 10, draining=True), "draining"),
        (worker("w2", 10, region="us"), "ineligible"),
        (worker("w2", 1), "no room"),
        (None, "not live"),
    ],
)
def test_unusable_preferred_target_falls_back_to_normal_placement(
    target: WorkerView | None, why: str
) -> None:
    fleet = [worker("w1", 10, region="eu")] + ([target] if target else [])
    snap = snapshot(fleet, [stream("m", 2, region="eu")], preferred={"m": "w2"})
    assert plan(snap, POLICY).grants == [Grant("m", "w1", "placed")], why


# -- unplaced reasons -----------------------------------------------------------


def test_unplaced_reason_no_live_worker() -> None:
    p = plan(snapshot([], [stream("a", region="eu")]), POLICY)
    assert p.unplaced == {"a": "no live worker"}


def test_unplaced_reason_names_the_missing_labels() -> None:
    snap = snapshot([worker("w1", region="us")], [stream("a", region="eu", gpu="yes")])
    assert plan(snap, POLICY).unplaced == {"a": "no live worker has labels gpu=yes, region=eu"}


def test_unplaced_reason_counts_full_candidates_and_draining_ones() -> None:
    snap = snapshot(
        [
            worker("e1", 1, region="eu"),
            worker("e2", 1, region="eu"),
            worker("e3", 10, region="eu", draining=True),
            worker("u1", 10, region="us"),
        ],
        [stream("a", 2, region="eu")],
    )
    assert plan(snap, POLICY).unplaced == {
        "a": "no live worker has labels region=eu with free capacity for weight 2: "
        "2 candidates full, 1 more draining"
    }


def test_unplaced_reason_when_every_candidate_is_draining() -> None:
    snap = snapshot([worker("w1", draining=True), worker("w2", draining=True)], [stream("a")])
    assert plan(snap, POLICY).unplaced == {
        "a": "no live worker takes new streams: 2 candidates draining"
    }


def test_unplaced_reason_without_requires() -> None:
    snap = snapshot([worker("w1", 2)], [stream("a", 3)])
    assert plan(snap, POLICY).unplaced == {
        "a": "no live worker has free capacity for weight 3: 1 candidate full"
    }


# -- deleted, disabled, constraint, capacity -------------------------------------


def test_deleted_and_disabled_streams_are_revoked_without_target_and_are_not_moves() -> None:
    snap = snapshot(
        [worker("w1"), worker("w2")],
        [stream("off", enabled=False), stream("ok")],
        {"gone": "w1", "off": "w1", "ok": "w1"},
    )
    p = plan(snap, Policy(max_moves=0))
    assert p.revokes == [
        Revoke("gone", "w1", None, "deleted"),
        Revoke("off", "w1", None, "disabled"),
    ]
    assert p.moves == 0
    assert p.grants == []


def test_deleted_stream_weighs_one_until_its_owner_stops_it() -> None:
    snap = snapshot([worker("w1", 2)], [stream("a", 1), stream("b", 1)], {"gone": "w1", "a": "w1"})
    p = plan(snap, POLICY)
    assert "b" in p.unplaced  # w1: "a" + the deleted one still running = 2/2


def test_constraint_violation_moves_to_an_eligible_worker() -> None:
    snap = snapshot(
        [worker("w1", region="us"), worker("w2", region="eu"), worker("w3", region="eu")],
        [stream("a", 2, region="eu"), stream("x", 1)],
        {"a": "w1", "x": "w2"},
    )
    p = plan(snap, POLICY)
    assert p.revokes == [Revoke("a", "w1", "w3", "constraint")]
    assert p.grants == []


def test_constraint_violation_without_room_is_revoked_without_target() -> None:
    snap = snapshot(
        [worker("w1", region="us"), worker("w2", 1, region="eu")],
        [stream("a", 2, region="eu")],
        {"a": "w1"},
    )
    assert plan(snap, POLICY).revokes == [Revoke("a", "w1", None, "constraint")]


def test_constraint_violation_over_the_move_budget_is_revoked_without_target() -> None:
    snap = snapshot(
        [worker("w1", region="us"), worker("w2", region="eu")],
        [stream("a", region="eu")],
        {"a": "w1"},
    )
    assert plan(snap, Policy(max_moves=0)).revokes == [Revoke("a", "w1", None, "constraint")]


def test_capacity_violation_revokes_largest_first_until_it_fits() -> None:
    # w1 re-registered with capacity 5 while holding 3 + 3 + 2 = 8.
    snap = snapshot(
        [worker("w1", 5), worker("w2", 1)],
        [stream("b", 3), stream("a", 3), stream("c", 2)],
        {"a": "w1", "b": "w1", "c": "w1"},
    )
    p = plan(snap, POLICY)
    assert p.revokes == [Revoke("a", "w1", None, "capacity")]  # 3 does not fit on w2


def test_capacity_violation_moves_to_a_worker_with_room() -> None:
    snap = snapshot(
        [worker("w1", 3), worker("w2", 10)],
        [stream("a", 2), stream("b", 2), stream("c", 1)],
        {"a": "w1", "b": "w1", "c": "w1"},
    )
    p = plan(snap, POLICY)
    assert [r for r in p.revokes if r.reason == "capacity"] == [Revoke("a", "w1", "w2", "capacity")]


def test_capacity_violation_counts_streams_already_leaving() -> None:
    # w1 shrank to 3 but "d" is already on its way to w2: the 3 that stay fit.
    snap = snapshot(
        [worker("w1", 3), worker("w2", 10)],
        [stream("a"), stream("b"), stream("c"), stream("d", 2)],
        {"a": "w1", "b": "w1", "c": "w1"},
        revoking=[Holding("d", "w1", "revoking", target="w2")],
    )
    assert [r for r in plan(snap, POLICY).revokes if r.reason == "capacity"] == []


# -- draining ----------------------------------------------------------------------


def test_draining_worker_gets_nothing_new() -> None:
    snap = snapshot([worker("w1", draining=True), worker("w2", 1)], [stream("a"), stream("b")])
    p = plan(snap, POLICY)
    assert granted_to(p) == {"a": "w2"}
    assert "b" in p.unplaced


def test_draining_worker_moves_streams_to_a_target_with_room() -> None:
    snap = snapshot(
        [worker("w1", draining=True), worker("w2", 3)],
        [stream("a", 2), stream("b", 2), stream("c", 1)],
        {"a": "w1", "b": "w1", "c": "w1"},
    )
    p = plan(snap, POLICY)
    assert p.revokes == [Revoke("a", "w1", "w2", "drain"), Revoke("c", "w1", "w2", "drain")]
    assert "draining" in explain(snap, "b")


def test_draining_worker_keeps_streams_without_a_target() -> None:
    snap = snapshot([worker("w1", draining=True)], [stream("a")], {"a": "w1"})
    assert plan(snap, POLICY).empty
    assert explain(snap, "a") == (
        "stream 'a' runs on worker 'w1', which is draining; it stays until another live "
        "worker has room for weight 1"
    )


# -- in-flight holdings ---------------------------------------------------------


def test_revoking_holdings_are_untouched_and_counted_at_owner_and_target() -> None:
    snap = snapshot(
        [worker("w1", 3, draining=True), worker("w2", 3, region="eu")],
        [stream("moving", 2), stream("stopping", 1, enabled=False), stream("new", 2)],
        revoking=[
            Holding("moving", "w1", "revoking", target="w2"),
            Holding("stopping", "w2", "revoking"),
        ],
    )
    p = plan(snap, POLICY)
    assert p.revokes == []  # nothing revoked twice, disabled or not
    assert p.grants == []  # w2: 1 running + 2 reserved = 3/3
    assert "new" in p.unplaced
    assert explain(snap, "moving") == (
        "stream 'moving' still runs on worker 'w1' and moves to worker 'w2' once 'w1' "
        "reports it stopped"
    )


def test_revoking_holding_on_a_dead_worker_goes_to_its_target() -> None:
    snap = snapshot(
        [worker("w1"), worker("w2")],
        [stream("m")],
        revoking=[Holding("m", "dead", "revoking", target="w2")],
    )
    assert plan(snap, POLICY).grants == [Grant("m", "w2", "moved")]


# -- rebalance ----------------------------------------------------------------------


def test_rebalance_moves_from_the_most_to_the_least_utilised() -> None:
    snap = snapshot(
        [worker("w1"), worker("w2"), worker("w3")],
        [stream(f"s{i}") for i in range(6)] + [stream("t")],
        {**{f"s{i}": "w1" for i in range(6)}, "t": "w2"},
    )
    p = plan(snap, POLICY)
    assert p.revokes == [
        Revoke("s0", "w1", "w3", "rebalance"),
        Revoke("s1", "w1", "w2", "rebalance"),  # 1/10 each: the tie goes to w2
        Revoke("s2", "w1", "w3", "rebalance"),
    ]
    assert loads_after(snap, p) == {"w1": 6, "w2": 2, "w3": 2}  # w1 until they stop


def test_rebalance_leaves_a_spread_of_one_weight_alone() -> None:
    snap = snapshot(
        [worker("w1"), worker("w2")],
        [stream("a", 2), stream("b", 1)],
        {"a": "w1"},
    )
    assert plan(snap, POLICY).grants == [Grant("b", "w2", "placed")]
    snap = snapshot([worker("w1"), worker("w2")], [stream("a", 2)], {"a": "w1"})
    assert plan(snap, POLICY).empty  # 2 − 0 is not more than w = 2


def test_rebalance_moves_the_heaviest_stream_that_helps() -> None:
    snap = snapshot(
        [worker("w1"), worker("w2")],
        [stream("big", 5), stream("mid", 3), stream("one", 1)],
        {"big": "w1", "mid": "w1", "one": "w1"},
    )
    # 9 − 0 > 5: "big" moves; then 4 vs 5 is balanced.
    assert plan(snap, POLICY).revokes == [Revoke("big", "w1", "w2", "rebalance")]


def test_rebalance_honours_requires() -> None:
    snap = snapshot(
        [worker("w1", region="eu"), worker("w2", region="us")],
        [stream(f"s{i}", region="eu") for i in range(4)],
        {f"s{i}": "w1" for i in range(4)},
    )
    assert plan(snap, POLICY).empty


def test_rebalance_threshold_tolerates_spread() -> None:
    snap = snapshot(
        [worker("w1"), worker("w2")],
        [stream(f"s{i}") for i in range(4)],
        {f"s{i}": "w1" for i in range(4)},
    )
    assert plan(snap, Policy(rebalance_threshold=0.5)).empty  # 0.4 − 0 ≤ 0.5
    assert plan(snap, Policy(rebalance_threshold=0.3)).moves == 1  # 0.4 > 0.3, 0.2 < 0.3


def test_rebalance_counts_moves_in_flight_once() -> None:
    # Two of w1's four are already on their way to w2: nothing more to do.
    snap = snapshot(
        [worker("w1"), worker("w2")],
        [stream(f"s{i}") for i in range(4)],
        {"s0": "w1", "s1": "w1"},
        revoking=[Holding(f"s{i}", "w1", "revoking", target="w2") for i in (2, 3)],
    )
    assert plan(snap, POLICY).empty


def test_rebalance_counts_grants_of_the_same_pass() -> None:
    # Two finished moves land on w2 this pass: w1 and w2 end up at 2 each.
    snap = snapshot(
        [worker("w1"), worker("w2")],
        [stream("a"), stream("b"), stream("m1"), stream("m2")],
        {"a": "w1", "b": "w1"},
        preferred={"m1": "w2", "m2": "w2"},
    )
    p = plan(snap, POLICY)
    assert granted_to(p) == {"m1": "w2", "m2": "w2"}
    assert p.revokes == []


def test_rebalance_by_utilisation_across_capacities() -> None:
    # 10/20 vs 0/5: move while u_A − u_B > (w/2)(1/20 + 1/5) = 0.125 w.
    snap = snapshot(
        [worker("big", 20), worker("small", 5)],
        [stream(f"s{i:02}") for i in range(10)],
        {f"s{i:02}": "big" for i in range(10)},
    )
    p = plan(snap, POLICY)
    assert {r.target for r in p.revokes} == {"small"}
    assert p.moves == 2  # 8/20 vs 2/5: 0.4 − 0.4 = 0


# -- move budget ----------------------------------------------------------------------


def test_moves_are_bounded_and_spent_constraint_first_then_drain_then_rebalance() -> None:
    snap = snapshot(
        [
            worker("bad", 10, region="us"),
            worker("drn", 10, region="eu", draining=True),
            worker("hot", 10, region="eu"),
            worker("cold", 10, region="eu"),
        ],
        [stream(f"c{i}", region="eu") for i in range(2)]
        + [stream(f"d{i}") for i in range(2)]
        + [stream(f"r{i}") for i in range(6)],
        {
            **{f"c{i}": "bad" for i in range(2)},
            **{f"d{i}": "drn" for i in range(2)},
            **{f"r{i}": "hot" for i in range(6)},
        },
    )
    reasons = [r.reason for r in plan(snap, Policy(max_moves=3)).revokes]
    assert reasons == ["constraint", "constraint", "drain"]
    p = plan(snap, Policy(max_moves=1))
    assert [(r.reason, r.target is not None) for r in p.revokes] == [
        ("constraint", True),
        ("constraint", False),  # must not run where it may not run
    ]
    p = plan(snap, Policy(max_moves=100))
    assert p.moves == len(p.revokes) > 4
    assert {r.reason for r in p.revokes} == {"constraint", "drain", "rebalance"}


def test_grants_are_not_moves_and_are_unbounded() -> None:
    snap = snapshot([worker("w1", 100)], [stream(f"s{i}") for i in range(50)])
    p = plan(snap, Policy(max_moves=0))
    assert len(p.grants) == 50
    assert p.moves == 0


# -- determinism and explain ---------------------------------------------------------


def test_plan_does_not_depend_on_input_order() -> None:
    rng = random.Random(7)
    workers = [worker(f"w{i}", rng.randint(3, 12), region=rng.choice("ab")) for i in range(8)]
    streams = [
        stream(f"s{i:03}", rng.randint(1, 4), **({"region": "a"} if i % 3 == 0 else {}))
        for i in range(60)
    ]
    holdings = {s.key: "w1" for s in streams[:5]} | {s.key: "w2" for s in streams[5:8]}
    base = plan(snapshot(workers, streams, holdings), POLICY)
    for _ in range(5):
        rng.shuffle(workers)
        rng.shuffle(streams)
        items = list(holdings.items())
        rng.shuffle(items)
        again = plan(snapshot(workers, streams, dict(items)), POLICY)
        assert again == base


def test_explain_sentences() -> None:
    snap = snapshot(
        [worker("w1", region="us")],
        [stream("a"), stream("b", region="eu"), stream("new"), stream("off", enabled=False)],
        {"a": "w1", "gone": "w1"},
    )
    assert explain(snap, "a") == (
        "stream 'a' runs on worker 'w1', which satisfies its requirements and has capacity "
        "for it (3/10 used after this pass); it stays there (I5)"
    )
    assert explain(snap, "b") == "stream 'b' is unplaced: no live worker has labels region=eu"
    assert explain(snap, "new").startswith(
        "stream 'new' is unassigned and is granted to worker 'w1'"
    )
    assert explain(snap, "gone") == "stream 'gone' was deleted; worker 'w1' is told to stop it"
    assert explain(snap, "off") == "stream 'off' is disabled, so it runs nowhere"
    assert explain(snap, "nope") == "there is no stream 'nope'"
    moved = snapshot([worker("w1", region="eu")], [stream("a", region="us")], {"a": "w1"})
    assert explain(moved, "a") == (
        "stream 'a' runs on worker 'w1' and moves with no target yet (it is placed again once "
        "stopped): that worker no longer has the labels it requires"
    )
