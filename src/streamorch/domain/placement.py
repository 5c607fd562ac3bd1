"""Placement: from a `Snapshot` of the fleet to the `Plan` that moves it towards I2–I6.

Pure and deterministic: no I/O, no clock, no randomness; every tie is broken by
worker id or stream key, and the plan does not depend on the order of the
snapshot's dicts. The reconciler calls `plan()` once per pass inside one
transaction and writes the result back.

Two loads are kept per live worker:

* `safe` — what may run there before this plan settles: every stream it owns
  (granted or revoking: a revoking stream runs until its owner reports it
  stopped) + the weight of revoking streams moving to it (reserved) + what this
  plan grants or moves to it. Every "has room" check uses it, so I4 holds even
  while moves are in flight.
* `final` — what will run there once every move settles: granted streams that
  stay + streams moving to it. Rebalancing compares these, so streams already on
  their way out are not counted twice and the fleet does not over-correct.

One pass, in order (each phase sees what the earlier ones planned):

1. Deleted / disabled streams are revoked without a target (no move).
2. Unassigned enabled streams (no holding, or holding on a worker that is no
   longer live): first those whose `preferred` worker (the target of a finished
   move) can still take them ("moved"), then the rest heaviest first onto the
   eligible, non-draining worker with room and the lowest utilisation after
   placement ("placed"). Grants are not moves and are unbounded.
3. Constraint / capacity violations: revoked in any case, with a target while the
   move budget lasts and one has room.
4. Draining workers: streams move off only when a target has room.
5. Rebalance (I5/I6) among non-draining workers; see `_Planner.rebalance`.

While the snapshot is `settling` (workers still registering one after another), the
streams of step 2 that are not the target of a finished move wait: placed now, they
would move again a moment later. Rebalancing goes on (a join's moves are the same
whether made at once or after the burst).

Pinned workers (instances of the original protocol, which cannot be told to stop
anything) are never a target, and what they hold is fixed: no constraint,
capacity, drain or rebalance revoke touches it. Only a deleted or disabled stream
is revoked there (without a target: nothing else may start it until they stop).

Cost (the reconciler runs this every second at up to 100,000 streams / 1,000
workers; figures from bench/placement.py): workers are grouped by (capacity,
labels). Inside a group the least loaded worker is both the best choice and the
one with the most room, so each group keeps a heap keyed by (load, id), and a
stream only looks at the tops of the groups its `requires` allows — through a
lazily updated heap of those groups per (requires, weight), O(log groups) per
stream. Rebalancing takes A from a max-heap and looks only at each group's top
as B. Bookkeeping is by stream key rather than per-stream tuples: a pass that
allocates 100,000 long-lived containers spends most of its time in the cyclic
garbage collector.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from operator import attrgetter

from streamorch.domain.models import Grant, Plan, Policy, Revoke, Snapshot, StreamView

ReqKey = frozenset[tuple[str, str]]

# The weight assumed for a stream that was deleted while a worker still holds it.
DELETED_WEIGHT = 1
SETTLING = "workers are still registering: placed once the fleet has settled (PLACEMENT_SETTLE_S)"

_NO_REQ: ReqKey = frozenset()
_EPS = 1e-9


def plan(snapshot: Snapshot, policy: Policy) -> Plan:
    """The grants and revokes that bring `snapshot` closer to the invariants."""
    return _Planner(snapshot, policy).run()


def explain(snapshot: Snapshot, key: str, policy: Policy | None = None) -> str:
    """One sentence: where stream `key` runs and why, or why it runs nowhere."""
    planner = _Planner(snapshot, policy or Policy())
    result = planner.run()
    stream = snapshot.streams.get(key)
    holding = snapshot.assignments.get(key)
    owner = holding.worker if holding is not None else None
    live = owner is not None and owner in snapshot.workers

    if stream is None:
        if holding is None:
            return f"there is no stream {key!r}"
        if live:
            return f"stream {key!r} was deleted; worker {owner!r} is told to stop it"
        return f"stream {key!r} was deleted"
    if not stream.enabled:
        if live:
            return f"stream {key!r} is disabled; worker {owner!r} is told to stop it"
        return f"stream {key!r} is disabled, so it runs nowhere"
    for grant in result.grants:
        if grant.stream == key:
            why = (
                "the target of its finished move"
                if grant.reason == "moved"
                else "the eligible worker with room and the lowest utilisation"
            )
            return f"stream {key!r} is unassigned and is granted to worker {grant.worker!r}, {why}"
    if key in result.unplaced:
        return f"stream {key!r} is unplaced: {result.unplaced[key]}"
    # Enabled, neither granted nor unplaced: it is held by a live worker.
    assert holding is not None
    assert owner is not None
    if holding.state != "granted":
        if holding.target is None:
            return f"stream {key!r} is being stopped on worker {owner!r}"
        return (
            f"stream {key!r} still runs on worker {owner!r} and moves to worker "
            f"{holding.target!r} once {owner!r} reports it stopped"
        )
    worker = snapshot.workers[owner]
    if worker.pinned:
        return (
            f"stream {key!r} runs on instance {worker.name or owner!r} of the original protocol, "
            "which cannot be told to stop a stream: it is pinned there until that instance "
            "releases it or its lease expires"
        )
    for revoke in result.revokes:
        if revoke.stream == key:
            where = (
                f"to worker {revoke.target!r}"
                if revoke.target is not None
                else "with no target yet (it is placed again once stopped)"
            )
            return f"stream {key!r} runs on worker {owner!r} and moves {where}: {_REASONS[revoke.reason]}"
    if key in planner.notes:
        return f"stream {key!r} runs on worker {owner!r}, {planner.notes[key]}"
    return (
        f"stream {key!r} runs on worker {owner!r}, which satisfies its requirements and has "
        f"capacity for it ({planner.safe[owner]}/{worker.capacity} used after this pass); it stays there (I5)"
    )


_REASONS = {
    "constraint": "that worker no longer has the labels it requires",
    "capacity": "that worker runs more than its capacity",
    "drain": "that worker is draining",
    "rebalance": "the fleet is out of balance beyond the threshold",
    "deleted": "the stream was deleted",
    "disabled": "the stream is disabled",
}


def _req_key(requires: Mapping[str, str]) -> ReqKey:
    return frozenset(requires.items()) if requires else _NO_REQ


def _labels_text(requires: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(requires.items()))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _satisfies(labels: Mapping[str, str], requires: Mapping[str, str]) -> bool:
    for k, v in requires.items():  # noqa: SIM110 - a plain loop allocates nothing
        if labels.get(k) != v:
            return False
    return True


class _Group:
    """Non-draining live workers with the same capacity and labels."""

    __slots__ = ("capacity", "fheap", "heap", "labels", "members")

    def __init__(self, capacity: int, labels: ReqKey) -> None:
        self.capacity = capacity
        self.labels = labels
        self.members: list[str] = []
        self.heap: list[tuple[int, str]] = []  # (safe load, id); stale entries popped lazily
        self.fheap: list[tuple[int, str]] = []  # (final load, id), built by rebalance


class _Planner:
    def __init__(self, snapshot: Snapshot, policy: Policy) -> None:
        self.snapshot = snapshot
        self.streams = snapshot.streams
        self.policy = policy
        self.workers = snapshot.workers
        self.safe: dict[str, int] = dict.fromkeys(self.workers, 0)
        self.final: dict[str, int] = dict.fromkeys(self.workers, 0)
        self.labels: dict[str, ReqKey] = {
            wid: frozenset(w.labels.items()) for wid, w in self.workers.items()
        }
        # Keys of granted streams on live workers that stay unless this plan moves them.
        self.held: dict[str, list[str]] = {}
        # Enabled streams with no live owner.
        self.unassigned: list[StreamView] = []
        # The target of a revoking holding whose owner is gone (used when `preferred`
        # names none: the move is over, the owner stopped by losing its lease).
        self.fallback: dict[str, str] = {}
        self.grants: list[Grant] = []
        self.revokes: list[Revoke] = []
        self.unplaced: dict[str, str] = {}
        # Why a stream that looks movable stays (for explain).
        self.notes: dict[str, str] = {}
        self.moves = 0
        self.groups: dict[tuple[int, ReqKey], _Group] = {}
        self.group_of: dict[str, _Group] = {}
        self._eligible: dict[ReqKey, list[_Group]] = {}
        # Rebalance: largest capacity, and per source worker its lightest stream and
        # its streams by requires and weight (built when first needed).
        self._cmax = 0
        self._wmin: dict[str, int] = {}
        self._by_class: dict[str, dict[ReqKey, dict[int, list[str]]]] = {}

    # -- the pass ---------------------------------------------------------------

    def run(self) -> Plan:
        mandatory = self.read_holdings()
        self.build_groups()
        self.place_unassigned()
        self.fix_violations(mandatory)
        self.drain()
        self.rebalance()
        return Plan(grants=self.grants, revokes=self.revokes, unplaced=self.unplaced)

    def read_holdings(self) -> list[tuple[str, str, str]]:
        """Loads, deleted/disabled revokes and unassigned streams, in one sweep.

        Returns the granted streams that must leave their worker, heaviest first:
        (key, owner, "constraint" | "capacity").
        """
        workers, streams, safe, final = self.workers, self.streams, self.safe, self.final
        held, unassigned, fallback = self.held, self.unassigned, self.fallback
        assignments = self.snapshot.assignments
        worker_labels = {wid: w.labels for wid, w in workers.items()}
        pinned = {wid for wid, w in workers.items() if w.pinned}
        incoming: dict[str, int] = {}
        gone: list[Revoke] = []
        mandatory: list[tuple[str, str, str]] = []
        held_streams = 0
        for key, h in assignments.items():
            s = streams.get(key)
            if s is not None:
                held_streams += 1
            owner = h.worker
            if owner not in workers:
                # Lease expired (the store normally deletes these first): nothing runs.
                if s is not None and s.enabled:
                    unassigned.append(s)
                    if h.state != "granted" and h.target is not None:
                        fallback[key] = h.target
                continue
            w = s.weight if s is not None else DELETED_WEIGHT
            safe[owner] += w
            if h.state != "granted":  # in flight: counts, never touched again
                target = h.target
                if target is not None and target != owner and target in workers:
                    safe[target] += w
                    final[target] += w
                    incoming[target] = incoming.get(target, 0) + w
                continue
            if s is None:
                gone.append(Revoke(key, owner, None, "deleted"))
                continue
            if not s.enabled:
                gone.append(Revoke(key, owner, None, "disabled"))
                continue
            if owner in pinned:  # counted, but neither checked nor movable
                final[owner] += w
                continue
            if s.requires and not _satisfies(worker_labels[owner], s.requires):
                mandatory.append((key, owner, "constraint"))
                continue
            final[owner] += w
            bucket = held.get(owner)
            if bucket is None:
                held[owner] = [key]
            else:
                bucket.append(key)
        if held_streams < len(streams):  # some stream has no holding at all
            # In catalog order: already sorted by key when the store reads it so.
            for key, s in streams.items():
                if s.enabled and key not in assignments:
                    unassigned.append(s)
        gone.sort(key=lambda r: r.stream)
        self.revokes.extend(gone)

        for owner, keys in held.items():
            capacity = workers[owner].capacity
            kept = final[owner] - incoming.get(owner, 0)
            if kept <= capacity:
                continue
            keys.sort()
            keys.sort(key=lambda k: streams[k].weight, reverse=True)  # stable: ties by key
            i = 0
            while kept > capacity and i < len(keys):
                w = streams[keys[i]].weight
                kept -= w
                final[owner] -= w
                mandatory.append((keys[i], owner, "capacity"))
                i += 1
            del keys[:i]
        mandatory.sort(key=lambda m: (-streams[m[0]].weight, m[0]))
        return mandatory

    def build_groups(self) -> None:
        for wid in sorted(self.workers):
            worker = self.workers[wid]
            if worker.draining or worker.pinned or worker.capacity <= 0:
                continue
            gkey = (worker.capacity, self.labels[wid])
            group = self.groups.get(gkey)
            if group is None:
                group = self.groups[gkey] = _Group(worker.capacity, gkey[1])
            group.members.append(wid)
            self.group_of[wid] = group
        for group in self.groups.values():
            group.heap = [(self.safe[wid], wid) for wid in group.members]
            heapq.heapify(group.heap)

    def place_unassigned(self) -> None:
        workers, safe = self.workers, self.safe
        pending = self.unassigned
        pending.sort(key=attrgetter("key"))
        pending.sort(key=attrgetter("weight"), reverse=True)  # stable: ties by key
        preferred, fallback = self.snapshot.preferred, self.fallback
        rest: list[StreamView] = pending
        if preferred or fallback:
            rest = []
            for s in pending:
                target = preferred.get(s.key) or fallback.get(s.key)
                if target is not None and target in self.group_of:
                    w = s.weight
                    if (
                        _satisfies(workers[target].labels, s.requires)
                        and safe[target] + w <= workers[target].capacity
                    ):
                        self.grants.append(Grant(s.key, target, "moved"))
                        self.take(target, w)
                        continue
                rest.append(s)
        if self.snapshot.settling:
            for s in rest:
                self.unplaced[s.key] = SETTLING
            return
        # Per (requires, weight), a heap of the eligible groups keyed by (utilisation
        # after placement, id) of each group's least loaded worker. Loads only grow
        # in this loop, so a stored key is a lower bound of the group's true key: the
        # top is the answer once re-reading it gives the same key (lazy updates), and a
        # group without room for w never gets it back. One stream then costs
        # O(log groups), not O(groups).
        groups = list(self.groups.values())
        boards: dict[tuple[ReqKey, int], list[tuple[float, str, int]]] = {}
        reasons: dict[tuple[ReqKey, int], str] = {}
        grants, unplaced, final = self.grants, self.unplaced, self.final
        heappop, heapreplace = heapq.heappop, heapq.heapreplace
        index = {id(g): i for i, g in enumerate(groups)}
        for s in rest:
            w, req = s.weight, s.requires
            rk = frozenset(req.items()) if req else _NO_REQ
            board = boards.get((rk, w))
            if board is None:
                board = boards[(rk, w)] = [
                    ((g.heap[0][0] + w) / g.capacity, g.heap[0][1], index[id(g)])
                    for g in self.eligible(rk)
                    if self._top(g)[0] + w <= g.capacity
                ]
                heapq.heapify(board)
            while board:
                u, wid, gi = board[0]
                group = groups[gi]
                heap = group.heap
                load, top = heap[0]
                while load != safe[top]:  # stale entry
                    heappop(heap)
                    load, top = heap[0]
                if load + w > group.capacity:
                    heappop(board)
                    continue
                now = (load + w) / group.capacity
                if now == u and top == wid:
                    break
                heapreplace(board, (now, top, gi))
            else:
                reason = reasons.get((rk, w))
                if reason is None:
                    reason = reasons[(rk, w)] = self.unplaced_reason(rk, req, w)
                unplaced[s.key] = reason
                continue
            grants.append(Grant(s.key, wid, "placed"))
            load = safe[wid] = load + w
            final[wid] += w
            heapreplace(heap, (load, wid))  # wid was the valid top of its group

    def fix_violations(self, mandatory: list[tuple[str, str, str]]) -> None:
        for key, owner, reason in mandatory:
            s = self.streams[key]
            target = None
            if self.moves < self.policy.max_moves:
                target = self.best_target(_req_key(s.requires), s.weight)
            self.revokes.append(Revoke(key, owner, target, reason))
            if target is not None:
                self.moves += 1
                self.take(target, s.weight)

    def drain(self) -> None:
        budget = self.policy.max_moves
        streams = self.streams
        failed: set[tuple[ReqKey, int]] = set()
        for owner in sorted(self.held):
            if not self.workers[owner].draining:
                continue
            keys = sorted(self.held[owner])
            keys.sort(key=lambda k: streams[k].weight, reverse=True)
            for key in keys:
                s = streams[key]
                w, req = s.weight, s.requires
                if self.moves >= budget:
                    self.notes[key] = (
                        f"which is draining; it moves off in a later pass "
                        f"(this pass used its move budget of {budget})"
                    )
                    continue
                rk = _req_key(req)
                target = None if (rk, w) in failed else self.best_target(rk, w)
                if target is None:
                    failed.add((rk, w))
                    needs = f" with labels {_labels_text(req)}" if req else ""
                    self.notes[key] = (
                        f"which is draining; it stays until another live worker{needs} "
                        f"has room for weight {w}"
                    )
                    continue
                self.revokes.append(Revoke(key, owner, target, "drain"))
                self.moves += 1
                self.take(target, w)
                self.final[owner] -= w

    def rebalance(self) -> None:
        """Move granted streams from the most utilised worker A to a worker B while

            u_A - u_B > max(threshold, (w/2)(1/C_A + 1/C_B))      (u = final load / capacity)

        Each such move strictly lowers sum(L²/C), so this terminates and never
        oscillates across passes; with equal capacities it reads L_A - L_B > w,
        which is I6 at convergence. B is the eligible worker with room and the
        lowest utilisation, then the heaviest stream that satisfies the criterion.

        Cost: A are taken from a max-heap of utilisation; within a group only the
        top of its final-load heap can be the best B, so one A costs O(groups) and,
        past cheap bounds, O(distinct requires × weights on A). After a move only A
        and B changed, so the A tried since are simply put back.
        """
        budget = self.policy.max_moves
        groups = list(self.groups.values())
        if self.moves >= budget or not groups:
            return
        final, held = self.final, self.held
        capacity = {wid: g.capacity for wid, g in self.group_of.items()}
        order = [(-final[wid] / capacity[wid], wid) for wid in self.group_of if held.get(wid)]
        heapq.heapify(order)
        for group in groups:
            group.fheap = [(final[wid], wid) for wid in group.members]
            heapq.heapify(group.fheap)
        self._cmax = max(g.capacity for g in groups)

        while self.moves < budget and order:
            tops: list[tuple[float, str, _Group]] = []
            for group in groups:
                load, wid = self._ftop(group)
                tops.append((load / group.capacity, wid, group))
            tops.sort(key=lambda t: (t[0], t[1]))
            tried: list[str] = []
            move = None
            while order and move is None:
                neg_u, a = heapq.heappop(order)
                if neg_u != -final[a] / capacity[a] or a in tried:
                    continue  # stale or duplicate entry
                tried.append(a)
                if -neg_u - tops[0][0] <= self.policy.rebalance_threshold - _EPS:
                    break  # nobody left is far enough above the least utilised worker
                move = self._move_from(a, tops)
            if move is None:
                return
            a, b, key, w = move
            self.revokes.append(Revoke(key, a, b, "rebalance"))
            self.moves += 1
            final[a] -= w
            final[b] += w
            self.safe[b] += w
            heapq.heappush(self.group_of[a].fheap, (final[a], a))
            heapq.heappush(self.group_of[b].fheap, (final[b], b))
            for wid in [*tried, b] if held.get(b) else tried:
                heapq.heappush(order, (-final[wid] / capacity[wid], wid))

    def _move_from(
        self, a: str, tops: list[tuple[float, str, _Group]]
    ) -> tuple[str, str, str, int] | None:
        """The best rebalance move off `a`, as (a, b, key, weight), or None."""
        final, safe = self.final, self.safe
        thr = self.policy.rebalance_threshold
        ca, la = self.group_of[a].capacity, final[a]
        # Weights are whole numbers: nothing lighter than 1 moves.
        if la / ca - tops[0][0] <= 0.5 * (1 / ca + 1 / self._cmax) - _EPS:
            return None
        # The best B of each group while it is far enough below a, with how heavy
        # a stream it could take (room, and w < 2d / (ca + cb)).
        cands: list[tuple[str, _Group, int]] = []
        for _, b, group in tops:
            if b == a:
                continue  # a is the least loaded of its group: no move inside it
            cb = group.capacity
            d = la * cb - final[b] * ca  # (u_a - u_b) * ca * cb, exact
            if d <= 0 or d <= thr * ca * cb:
                break  # tops are sorted by utilisation: the rest are closer still
            most = min(cb - safe[b], (2 * d - 1) // (ca + cb))
            if most >= 1:
                cands.append((b, group, most))
        if not cands:
            return None
        lightest = self._wmin.get(a)
        if lightest is None:
            weights = [self.streams[k].weight for k in self.held[a]]
            lightest = self._wmin[a] = min((w for w in weights if w > 0), default=0)
        if not lightest or all(most < lightest for _, _, most in cands):
            return None
        mine = self._by_class.get(a)
        if mine is None:
            mine = self._by_class[a] = self._classes(a)
        for b, group, most in cands:
            pick: tuple[int, str] | None = None
            pick_from: list[str] = []
            for rk, by_weight in mine.items():
                if not rk <= group.labels:
                    continue
                for w, keys in by_weight.items():  # heaviest first
                    if w <= most and keys:
                        if pick is None or (-w, keys[-1]) < (-pick[0], pick[1]):
                            pick, pick_from = (w, keys[-1]), keys
                        break
            if pick is not None:
                pick_from.pop()
                return a, b, pick[1], pick[0]
        return None

    # -- helpers ----------------------------------------------------------------

    def _classes(self, wid: str) -> dict[ReqKey, dict[int, list[str]]]:
        """`wid`'s movable streams: requires → weight (heaviest first) → keys, the
        smallest key last (popped first)."""
        out: dict[ReqKey, dict[int, list[str]]] = {}
        streams = self.streams
        for key in self.held[wid]:
            s = streams[key]
            if s.weight > 0:
                rk = frozenset(s.requires.items()) if s.requires else _NO_REQ
                out.setdefault(rk, {}).setdefault(s.weight, []).append(key)
        for rk, by_weight in out.items():
            for keys in by_weight.values():
                keys.sort(reverse=True)
            out[rk] = dict(sorted(by_weight.items(), reverse=True))
        return out

    def eligible(self, rk: ReqKey) -> list[_Group]:
        groups = self._eligible.get(rk)
        if groups is None:
            groups = self._eligible[rk] = [g for g in self.groups.values() if rk <= g.labels]
        return groups

    def best_target(self, rk: ReqKey, w: int) -> str | None:
        """The eligible non-draining worker with room for `w` and the lowest
        utilisation after taking it (ties: id), or None."""
        best: str | None = None
        best_u = 0.0
        for group in self.eligible(rk):
            load, wid = self._top(group)
            after = load + w
            if after > group.capacity:
                continue
            u = after / group.capacity
            if best is None or u < best_u or (u == best_u and wid < best):
                best, best_u = wid, u
        return best

    def _ftop(self, group: _Group) -> tuple[int, str]:
        """(final load, id) of the group's least loaded worker once moves settle."""
        fheap, final = group.fheap, self.final
        while fheap[0][0] != final[fheap[0][1]]:
            heapq.heappop(fheap)
        return fheap[0]

    def _top(self, group: _Group) -> tuple[int, str]:
        """(safe load, id) of the group's least loaded worker."""
        heap, safe = group.heap, self.safe
        while heap[0][0] != safe[heap[0][1]]:
            heapq.heappop(heap)
        return heap[0]

    def take(self, wid: str, w: int) -> None:
        """`wid` gets `w` more weight (a grant or a move's target)."""
        self.final[wid] += w
        load = self.safe[wid] = self.safe[wid] + w
        group = self.group_of.get(wid)
        if group is not None:
            heap = group.heap
            if heap[0][1] == wid:
                heapq.heapreplace(heap, (load, wid))
            else:
                heapq.heappush(heap, (load, wid))

    def unplaced_reason(self, rk: ReqKey, req: Mapping[str, str], w: int) -> str:
        pinned = sum(1 for w in self.workers.values() if w.pinned and rk <= self.labels[w.id])
        later = (
            f"; {_count(pinned, 'instance')} of the original protocol may take it when it pulls"
            if pinned
            else ""
        )
        return self._unplaced_reason(rk, req, w) + later

    def _unplaced_reason(self, rk: ReqKey, req: Mapping[str, str], w: int) -> str:
        workers = {wid: v for wid, v in self.workers.items() if not v.pinned}
        if not workers:
            return "no live worker"
        eligible = [wid for wid in workers if rk <= self.labels[wid]]
        wanted = _labels_text(req)
        if not eligible:
            return f"no live worker has labels {wanted}"
        draining = sum(1 for wid in eligible if workers[wid].draining)
        active = len(eligible) - draining
        with_labels = f" has labels {wanted} and" if req else ""
        if not active:
            return (
                f"no live worker{with_labels} takes new streams: "
                f"{_count(draining, 'candidate')} draining"
            )
        with_labels = f" has labels {wanted} with" if req else " has"
        tail = f", {draining} more draining" if draining else ""
        return (
            f"no live worker{with_labels} free capacity for weight {w}: "
            f"{_count(active, 'candidate')} full{tail}"
        )
