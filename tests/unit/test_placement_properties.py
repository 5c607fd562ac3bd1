"""Properties of `plan()` over random fleets, and over the passes a reconciler runs.

The simulation plays the store and the workers: a grant becomes a granted holding;
a revoke becomes a revoking holding, and one pass later its owner reports it
stopped: the holding goes away and a move's target becomes the stream's
`preferred` worker for the next pass.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from streamorch.domain.models import Holding, Plan, Policy, Snapshot, StreamView, WorkerView
from streamorch.domain.placement import DELETED_WEIGHT, plan

MAX_PASSES = 400


def weight_of(snap: Snapshot, key: str) -> int:
    s = snap.streams.get(key)
    return s.weight if s is not None else DELETED_WEIGHT


def loads(snap: Snapshot, p: Plan | None = None) -> dict[str, int]:
    """owned (granted or revoking) + reserved, + what `p` grants or moves there."""
    out = dict.fromkeys(snap.workers, 0)
    for key, h in snap.assignments.items():
        if h.worker in out:
            out[h.worker] += weight_of(snap, key)
            if h.state == "revoking" and h.target in out:
                out[h.target] += weight_of(snap, key)
    for g in p.grants if p else ():
        out[g.worker] += weight_of(snap, g.stream)
    for r in p.revokes if p else ():
        if r.target is not None:
            out[r.target] += weight_of(snap, r.stream)
    return out


def is_unassigned(snap: Snapshot, key: str) -> bool:
    h = snap.assignments.get(key)
    return h is None or h.worker not in snap.workers


def check_plan(snap: Snapshot, p: Plan, policy: Policy) -> None:
    """What every single plan must satisfy, whatever the state it starts from."""
    workers = snap.workers
    before = loads(snap)
    for wid, load in loads(snap, p).items():
        # A worker already over capacity (it re-registered smaller) only gets nothing more.
        cap = workers[wid].capacity
        assert load <= cap or load == before[wid], f"I4: {wid} at {load}/{cap}"
    touched = [g.stream for g in p.grants] + [r.stream for r in p.revokes]
    assert len(touched) == len(set(touched)), "a stream is granted or revoked twice"
    assert p.moves <= policy.max_moves
    for g in p.grants:
        s, w = snap.streams[g.stream], workers[g.worker]
        assert s.enabled
        assert is_unassigned(snap, g.stream)
        assert not w.draining
        assert w.satisfies(s.requires)
    for r in p.revokes:
        h = snap.assignments[r.stream]
        assert h.state == "granted"
        assert h.worker == r.worker
        assert r.worker in workers
        s = snap.streams.get(r.stream)
        owner = workers[r.worker]
        expected = {
            s is None: "deleted",
            s is not None and not s.enabled: "disabled",
        }.get(True)
        if expected is not None:
            assert (r.reason, r.target) == (expected, None)
            continue
        assert s is not None
        if r.reason == "constraint":
            assert not owner.satisfies(s.requires)
        elif r.reason == "drain":
            assert owner.draining
            assert r.target is not None
        elif r.reason == "rebalance":
            assert not owner.draining
            assert r.target is not None
        else:
            assert r.reason == "capacity"
        if r.target is not None:
            target = workers[r.target]
            assert r.target != r.worker
            assert not target.draining
            assert target.satisfies(s.requires)
    granted = {g.stream for g in p.grants}
    for key, s in snap.streams.items():
        if s.enabled and is_unassigned(snap, key) and key not in granted:
            assert p.unplaced.get(key), f"{key} is left unassigned without a reason"


def apply(snap: Snapshot, p: Plan) -> Snapshot:
    """The store writes the plan; owners of streams revoked in the previous pass stop them."""
    stopped = [k for k, h in snap.assignments.items() if h.state == "revoking"]
    assignments = dict(snap.assignments)
    for r in p.revokes:
        assignments[r.stream] = Holding(r.stream, r.worker, "revoking", r.target)
    for g in p.grants:
        assignments[g.stream] = Holding(g.stream, g.worker)
    preferred: dict[str, str] = {}
    for key in stopped:
        h = assignments.pop(key)
        if h.target is not None and key in snap.streams:
            preferred[key] = h.target
    return Snapshot(dict(snap.workers), snap.streams, assignments, preferred)


@dataclass
class Run:
    snap: Snapshot
    passes: int
    moves: int
    plans: list[Plan]


def converge(snap: Snapshot, policy: Policy) -> Run:
    moves = 0
    plans: list[Plan] = []
    for passes in range(MAX_PASSES):
        p = plan(snap, policy)
        check_plan(snap, p, policy)
        in_flight = any(h.state == "revoking" for h in snap.assignments.values())
        if p.empty and not in_flight:
            return Run(snap, passes, moves, plans)
        moves += p.moves
        plans.append(p)
        snap = apply(snap, p)
    raise AssertionError(f"no convergence in {MAX_PASSES} passes")


def assert_converged(snap: Snapshot, policy: Policy) -> None:
    workers = snap.workers
    load = loads(snap)
    assert all(load[wid] <= w.capacity for wid, w in workers.items()), "I4"
    for key, h in snap.assignments.items():
        assert h.state == "granted"
        assert workers[h.worker].satisfies(snap.streams[key].requires)
    active = [w for w in workers.values() if not w.draining]
    # I6: no move between two active workers would still satisfy the criterion.
    for key, h in snap.assignments.items():
        a = workers[h.worker]
        if a.draining:
            continue
        s = snap.streams[key]
        ua = load[a.id] / a.capacity
        for b in active:
            if b.id == a.id or not b.satisfies(s.requires):
                continue
            if load[b.id] + s.weight > b.capacity:
                continue
            ub = load[b.id] / b.capacity
            bound = s.weight / 2 * (1 / a.capacity + 1 / b.capacity)
            assert ua - ub <= bound + policy.rebalance_threshold + 1e-9, (key, a.id, b.id)
    # I2: an enabled stream left unassigned fits on no active worker.
    for key, s in snap.streams.items():
        if s.enabled and key not in snap.assignments:
            for b in active:
                assert not (b.satisfies(s.requires) and load[b.id] + s.weight <= b.capacity)
    assert plan(snap, policy).empty


# -- random fleets -------------------------------------------------------------------


def random_labels(rng: random.Random) -> dict[str, str]:
    labels = {}
    if region := rng.choice([None, "eu", "us"]):
        labels["region"] = region
    if rng.random() < 0.3:
        labels["gpu"] = "yes"
    return labels


def random_requires(rng: random.Random) -> dict[str, str]:
    requires = {}
    if rng.random() < 0.4:
        requires["region"] = rng.choice(["eu", "us"])
    if rng.random() < 0.15:
        requires["gpu"] = "yes"
    return requires


def random_snapshot(seed: int, n_workers: int, n_streams: int) -> Snapshot:
    """A valid state (every holding eligible, no worker over capacity), except that
    in some a few workers then change capacity or labels."""
    rng = random.Random(seed)
    draining_share = rng.choice([0, 0, 0.1, 0.3])
    workers = {
        f"w{i:02}": WorkerView(
            f"w{i:02}",
            rng.randint(1, 40),
            random_labels(rng),
            draining=rng.random() < draining_share,
        )
        for i in range(n_workers)
    }
    streams = {
        f"s{i:03}": StreamView(
            f"s{i:03}",
            rng.randint(1, 5),
            random_requires(rng),
            enabled=rng.random() < 0.95,
        )
        for i in range(n_streams)
    }
    load = dict.fromkeys(workers, 0)
    ids = sorted(workers)

    def fits(wid: str, requires: dict[str, str] | object, weight: int) -> bool:
        w = workers[wid]
        return load[wid] + weight <= w.capacity and (
            not isinstance(requires, dict) or w.satisfies(requires)
        )

    assignments: dict[str, Holding] = {}
    assigned_share = rng.random()
    for key, s in streams.items():
        if rng.random() >= assigned_share:
            continue
        owner = rng.choice(ids)
        if not fits(owner, dict(s.requires), s.weight):
            continue
        load[owner] += s.weight
        holding = Holding(key, owner)
        if rng.random() < 0.1:  # a move in flight
            target = rng.choice(ids)
            t = workers[target]
            if target != owner and not t.draining and fits(target, dict(s.requires), s.weight):
                load[target] += s.weight
                holding = Holding(key, owner, "revoking", target)
        assignments[key] = holding
    for i in range(rng.randint(0, 3)):  # deleted streams still held
        owner = rng.choice(ids)
        if fits(owner, None, DELETED_WEIGHT):
            load[owner] += DELETED_WEIGHT
            assignments[f"gone{i}"] = Holding(f"gone{i}", owner)
    if rng.random() < 0.3:
        # Some workers re-registered with less capacity or other labels: what they
        # hold may now break I4 or their streams' requires.
        for wid in rng.sample(ids, min(3, len(ids))):
            w = workers[wid]
            workers[wid] = WorkerView(
                wid,
                rng.randint(1, w.capacity),
                random_labels(rng) if rng.random() < 0.5 else w.labels,
                draining=w.draining,
            )
    return Snapshot(workers, streams, assignments)


policies = st.builds(
    Policy,
    rebalance_threshold=st.sampled_from([0.0, 0.0, 0.05, 0.2]),
    max_moves=st.sampled_from([3, 10, 100]),
)


@settings(max_examples=500, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_workers=st.integers(1, 30),
    n_streams=st.integers(0, 300),
    policy=policies,
)
def test_random_fleets_converge_to_a_balanced_capacity_safe_state(
    seed: int, n_workers: int, n_streams: int, policy: Policy
) -> None:
    run = converge(random_snapshot(seed, n_workers, n_streams), policy)
    assert_converged(run.snap, policy)


# -- a worker joins or leaves -------------------------------------------------------


def equal_fleet(m: int, s: int) -> Snapshot:
    capacity = max(s, 1)
    workers = {f"w{i:02}": WorkerView(f"w{i:02}", capacity) for i in range(m)}
    streams = {f"s{i:03}": StreamView(f"s{i:03}") for i in range(s)}
    return Snapshot(workers, streams, {})


@settings(max_examples=100, deadline=None)
@given(m=st.integers(1, 12), s=st.integers(0, 200), max_moves=st.sampled_from([1, 7, 100]))
def test_a_joining_worker_takes_its_share_with_few_moves(m: int, s: int, max_moves: int) -> None:
    policy = Policy(max_moves=max_moves)
    snap = converge(equal_fleet(m, s), policy).snap
    snap.workers["zz"] = WorkerView("zz", max(s, 1))
    run = converge(snap, policy)
    assert_converged(run.snap, policy)
    assert run.moves <= math.ceil(s / (m + 1)) + 1
    assert all(r.target == "zz" for p in run.plans for r in p.revokes)


@settings(max_examples=100, deadline=None)
@given(m=st.integers(2, 12), s=st.integers(0, 200), data=st.data())
def test_a_leaving_worker_moves_only_its_own_streams(m: int, s: int, data: st.DataObject) -> None:
    policy = Policy()
    before = converge(equal_fleet(m, s), policy).snap
    victim = data.draw(st.sampled_from(sorted(before.workers)))
    orphans = {k for k, h in before.assignments.items() if h.worker == victim}
    # The store deletes an expired worker and its holdings in one go.
    workers = {wid: w for wid, w in before.workers.items() if wid != victim}
    kept = {k: h for k, h in before.assignments.items() if h.worker != victim}
    run = converge(Snapshot(workers, before.streams, kept), policy)
    assert_converged(run.snap, policy)
    assert all(not p.revokes for p in run.plans)
    assert {g.stream for p in run.plans for g in p.grants} == orphans
    assert all(run.snap.assignments[k] == h for k, h in kept.items())
