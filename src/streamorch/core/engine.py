"""One reconcile pass, sequenced: the policy of the control loop, over the store's steps.

A pass is one transaction (`EngineStore.pass_tx`), skipped when another replica
holds the pass lock (I7):

    lock → outage rule → expire → finish moves → generation → (snapshot → settle →
    plan → apply) → events → touch → stamp revokes → next expiry → note the pass

The store only runs each step's statement; what to do and in which order is here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from streamorch.core.ports import EngineStore, GrantRow, PassTx
from streamorch.domain import placement, settle
from streamorch.domain.collector import paused as paused_gc
from streamorch.domain.errors import TransactionConflict
from streamorch.domain.models import Plan, Policy, Snapshot
from streamorch.domain.records import Event, PassResult

log = logging.getLogger(__name__)

T = TypeVar("T")

CONFLICT_ATTEMPTS = 5


class Offloader:
    """Runs CPU-heavy, pure work (snapshot building, planning) in a worker thread.

    A pass at 100,000 streams spends about half a second in Python; on the event
    loop that half second would hold back every heartbeat (I9). With `in_thread`
    off (RECONCILE_PLAN_IN_THREAD=false) it runs inline (kept for comparison:
    bench/pass_latency.py).
    """

    def __init__(self, in_thread: bool = True) -> None:
        self.in_thread = in_thread

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.in_thread:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)


async def reconcile_pass(
    store: EngineStore,
    policy: Policy,
    seen_generation: int | None,
    *,
    lease_ttl: float = 10.0,
    expiry_grace_s: float = 0.0,
    offload: Offloader | None = None,
) -> PassResult:
    """One pass, run again (up to CONFLICT_ATTEMPTS times, jittered) when its
    transaction lost a conflict with another (nothing of the lost attempt remains).

    `expiry_grace_s`: how late this server recently ran (core/loop_lag.py); a lease
    expires only once it ended longer ago than that, and never while a heartbeat of
    its worker waits in this server (I9).
    """
    run = offload or Offloader()
    retrying = AsyncRetrying(
        stop=stop_after_attempt(CONFLICT_ATTEMPTS),
        # Random waits so that the transactions that collided do not collide again.
        wait=wait_random_exponential(multiplier=0.01, max=0.2),
        retry=retry_if_exception_type(TransactionConflict),
        reraise=True,
        before_sleep=lambda state: log.info(
            "reconcile pass lost a conflict with a concurrent transaction; retrying",
            extra={"action": "transaction_retry", "attempt": state.attempt_number},
        ),
    )
    async for attempt in retrying:
        with attempt:
            return await _one_pass(store, policy, seen_generation, lease_ttl, expiry_grace_s, run)
    raise AssertionError("unreachable: tenacity reraises the last error")


async def _one_pass(
    store: EngineStore,
    policy: Policy,
    seen_generation: int | None,
    lease_ttl: float,
    expiry_grace_s: float,
    offload: Offloader,
) -> PassResult:
    result = PassResult()
    async with store.pass_tx(offload) as tx:
        if not await tx.try_lock():
            return result
        result.ran = True
        touched: set[Any] = set()
        events: list[Event] = []

        gap = await tx.pass_gap()
        if gap is not None and gap > lease_ttl / 2:
            # No pass ran for half a lease: the control plane itself was out, so
            # silence from workers proves nothing. Give every live worker a full
            # lease to reach us again rather than expiring the whole fleet at once.
            graced = await tx.grace_leases(lease_ttl)
            result.graced = graced
            events.append(
                Event(
                    "leases_extended",
                    None,
                    None,
                    "control_plane_outage",
                    {"gap_s": round(gap, 1), "workers": graced},
                )
            )

        alive = store.pending_workers()
        expired, released = await tx.expire(expiry_grace_s, alive)
        if expired:
            events += [Event("worker_expired", None, w, "lease_expired") for w in expired]
            events += [Event("revoked", k, w, "lease_expired") for k, w in released]
            touched.update(expired)
            result.expired = [str(w) for w in expired]

        finished = await tx.finish_moves()
        preferred = {k: str(t) for k, _, t, _ in finished if t is not None}
        moved_from = {k: str(w) for k, w, _, _ in finished}
        events += [Event("stopped", k, w, reason) for k, w, _, reason in finished]
        result.finished = len(finished)
        if finished:
            drained = await tx.drained_workers(list({str(w) for _, w, _, _ in finished}))
            events += [Event("drained", None, w, "drain_complete") for w in drained]

        generation = await tx.generation()
        result.generation = generation
        if expired or finished or generation != seen_generation:
            snapshot = await tx.snapshot()
            snapshot.preferred = preferred
            result.settle_s = await _settle_s(tx, policy)
            snapshot.settling = result.settle_s > 0
            plan = await offload(plan_paused, snapshot, policy)
            result.planned = True
            result.plan = plan
            touched |= await _apply(tx, plan, events, moved_from, offload)
        await tx.write_events(events)
        result.touched = await tx.touch(touched)
        await tx.stamp_revokes([r.stream for r in result.plan.revokes])
        result.next_expiry_s = await tx.next_expiry(expiry_grace_s, alive)
        await tx.note_pass()  # last: see the `note_pass` query's comment
    return result


async def _settle_s(tx: PassTx, policy: Policy) -> float:
    if policy.settle_s <= 0:
        return 0.0
    ages = await tx.recent_join_ages(policy.settle_s + policy.settle_max_s)
    return settle.remaining(ages, policy.settle_s, policy.settle_max_s)


async def _apply(
    tx: PassTx,
    plan: Plan,
    events: list[Event],
    moved_from: dict[str, str],
    offload: Offloader,
) -> set[Any]:
    touched: set[Any] = set()
    if plan.revokes:
        for key, worker, target, reason in await tx.apply_revokes(plan.revokes):
            events.append(
                Event("revoked", key, worker, reason, {"target": str(target) if target else None})
            )
            touched.add(worker)
    if plan.grants:
        rows = await tx.insert_grants(plan.grants)
        granted = await offload(grant_events, plan, rows, moved_from)
        events += granted
        touched.update(e.worker for e in granted)
    return touched


def grant_events(plan: Plan, rows: Sequence[GrantRow], moved_from: dict[str, str]) -> list[Event]:
    """The events of the grants written (rows of `insert_grants`): assigned, or moved."""
    reasons = {g.stream: g.reason for g in plan.grants}
    events = []
    with paused_gc():
        for key, worker, token in rows:
            if reasons[key] == "moved":  # the second half of a move: revoked, stopped, moved
                details = {"token": token, "from": moved_from.get(key)}
                events.append(Event("moved", key, worker, "moved", details))
            else:
                events.append(Event("assigned", key, worker, reasons[key], {"token": token}))
    return events


def plan_paused(snapshot: Snapshot, policy: Policy) -> Plan:
    with paused_gc():
        return placement.plan(snapshot, policy)
