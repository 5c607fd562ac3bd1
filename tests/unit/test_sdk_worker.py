"""`AsyncWorker`'s logic on `httpx.MockTransport`: fencing, backoff, converge, re-register.

No server and no wall-clock figures: the lease clock is the worker's `_clock` seam, set
by the test, and every wait is for a condition (tests/sdk keeps the real-process tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from streamorch.client import Assignment, AsyncWorker
from streamorch.client.http import SECRET_HEADER
from tests.support.fake_orchestrator import FakeOrchestrator
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Calls:
    def __init__(self) -> None:
        self.assigned: list[Assignment] = []
        self.revoked: list[Assignment] = []

    async def on_assign(self, a: Assignment) -> None:
        self.assigned.append(a)

    async def on_revoke(self, a: Assignment) -> None:
        self.revoked.append(a)


@pytest.fixture
def fake() -> FakeOrchestrator:
    return FakeOrchestrator(secret="s3cret")


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_worker(fake: FakeOrchestrator, calls: Calls, clock: Clock, **kw: Any) -> AsyncWorker:
    worker = AsyncWorker(
        "http://orch.test",
        name="w1",
        on_assign=calls.on_assign,
        on_revoke=calls.on_revoke,
        transport=fake.transport(),
        **kw,
    )
    worker._clock = clock
    worker._random = lambda: 1.0  # no jitter: the delays are the caps
    return worker


@pytest.fixture
async def worker(fake: FakeOrchestrator, calls: Calls, clock: Clock) -> AsyncIterator[AsyncWorker]:
    w = make_worker(fake, calls, clock, max_backoff=0.02)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


# -- converge ---------------------------------------------------------------------------
async def test_converge_starts_what_is_granted_and_stops_what_is_taken_away(
    fake: FakeOrchestrator, calls: Calls, worker: AsyncWorker
) -> None:
    fake.grant("a", "b")
    await wait_until(lambda: set(worker.running) == {"a", "b"}, what="a and b run")
    assert sorted(a.stream for a in calls.assigned) == ["a", "b"]
    assert not calls.revoked

    fake.revoke("a")
    fake.grant("c")
    await wait_until(lambda: set(worker.running) == {"b", "c"}, what="a stopped, c started")
    assert [a.stream for a in calls.revoked] == ["a"]
    assert sorted(a.stream for a in calls.assigned) == ["a", "b", "c"]
    await wait_until(lambda: worker.version == fake.version, what="the newest set applied")


async def test_a_kept_stream_takes_its_new_token_without_a_restart(
    fake: FakeOrchestrator, calls: Calls, worker: AsyncWorker
) -> None:
    fake.grant("a")
    await wait_until(lambda: "a" in worker.running, what="a runs")
    first = worker.running["a"].token
    fake.regrant()
    await wait_until(lambda: worker.running["a"].token > first, what="a's new token")
    assert len(calls.assigned) == 1
    assert not calls.revoked


async def test_a_failing_on_assign_is_tried_again_with_the_next_answer(
    fake: FakeOrchestrator, clock: Clock
) -> None:
    attempts: list[str] = []

    async def on_assign(a: Assignment) -> None:
        attempts.append(a.stream)
        if len(attempts) == 1:
            raise RuntimeError("cannot open the stream")

    async def on_revoke(a: Assignment) -> None:
        pass

    w = AsyncWorker(
        "http://orch.test",
        name="w1",
        on_assign=on_assign,
        on_revoke=on_revoke,
        transport=fake.transport(),
    )
    w._clock = clock
    fake.grant("a")
    async with w:
        await wait_until(lambda: "a" in w.running, what="a runs after a retry")
    assert attempts[:2] == ["a", "a"]
    assert w.callback_errors == 1


# -- the heartbeat body and the secret ---------------------------------------------------
async def test_the_first_heartbeat_reports_version_0_then_the_applied_version(
    fake: FakeOrchestrator, worker: AsyncWorker
) -> None:
    await wait_until(lambda: fake.of("heartbeat"), what="a heartbeat")
    first = fake.of("heartbeat")[0].body
    assert first["version"] == 0
    assert first["incarnation"] == 1
    assert first["running"] == []
    assert first["status"] == "active"
    assert first["metrics"]["registrations"] == 1

    fake.grant("a")
    await wait_until(
        lambda: any(h.body["running"] == ["a"] for h in fake.of("heartbeat")),
        what="a heartbeat that reports a",
    )
    body = next(h.body for h in fake.of("heartbeat") if h.body["running"] == ["a"])
    assert body["version"] == fake.version


async def test_every_request_after_registering_carries_the_secret(
    fake: FakeOrchestrator, worker: AsyncWorker
) -> None:
    await wait_until(lambda: fake.of("heartbeat") and fake.of("assignments"), what="requests")
    assert SECRET_HEADER not in fake.of("register")[0].headers
    after = [s for s in fake.sent if s.kind != "register"]
    assert after
    assert {s.headers[SECRET_HEADER] for s in after} == {"s3cret"}


# -- fencing ----------------------------------------------------------------------------
async def test_a_lease_not_renewed_in_time_stops_every_stream(
    fake: FakeOrchestrator, calls: Calls, clock: Clock, worker: AsyncWorker
) -> None:
    fake.grant("a", "b")
    await wait_until(lambda: set(worker.running) == {"a", "b"}, what="a and b run")
    fake.break_transport("heartbeat", times=10**6)  # no renewal from now on
    fake.break_transport("assignments", times=10**6)
    clock.now += worker.lease_ttl - worker.fence_margin - 0.5
    assert not worker.fenced  # half a second of the allowance is left
    clock.now += 1.0
    await wait_until(lambda: worker.fenced, what="self-fenced")
    await wait_until(lambda: not worker.running, what="every stream stopped")
    assert sorted(a.stream for a in calls.revoked) == ["a", "b"]
    assert worker.fences == 1


async def test_a_renewal_after_fencing_starts_the_streams_again(
    fake: FakeOrchestrator, calls: Calls, clock: Clock, worker: AsyncWorker
) -> None:
    fake.grant("a")
    await wait_until(lambda: "a" in worker.running, what="a runs")
    fake.break_transport("heartbeat", times=10**6)
    fake.break_transport("assignments", times=10**6)
    clock.now += worker.lease_ttl  # the lease is gone by the worker's count
    await wait_until(lambda: worker.fenced, what="self-fenced")
    await wait_until(lambda: not worker.running, what="a stopped")
    fake.heal()
    await wait_until(lambda: not worker.fenced, what="renewed again")
    fake.grant("b")  # the next answer is taken again
    await wait_until(lambda: set(worker.running) == {"a", "b"}, what="a and b run")
    assert [a.stream for a in calls.revoked] == ["a"]


@pytest.mark.parametrize(
    ("status", "code"), [(409, "superseded"), (409, "lease_expired"), (404, "worker_not_found")]
)
async def test_fenced_by_the_server_stops_everything_and_registers_again(
    fake: FakeOrchestrator, calls: Calls, worker: AsyncWorker, status: int, code: str
) -> None:
    fake.grant("a")
    await wait_until(lambda: "a" in worker.running, what="a runs")
    old = worker.running["a"].token
    fake.regrant()  # the new incarnation is granted a with a newer token
    fake.fail("heartbeat", status, code)
    await wait_until(lambda: worker.registrations == 2, what="registered again")
    await wait_until(lambda: "a" in worker.running, what="a runs again")
    assert [a.stream for a in calls.revoked] == ["a"]  # stopped before registering again
    assert [a.token for a in calls.assigned] == [old, worker.running["a"].token]
    assert worker.running["a"].token > old
    assert worker.incarnation == 2
    assert worker.conflicts == 1
    # Registering again starts over: its first report acknowledges no version yet.
    await wait_until(
        lambda: any(h.body["incarnation"] == 2 for h in fake.of("heartbeat")),
        what="a heartbeat of the new incarnation",
    )
    first_after = next(h.body for h in fake.of("heartbeat") if h.body["incarnation"] == 2)
    assert first_after["version"] == 0


async def test_an_answer_for_an_older_incarnation_is_dropped(
    fake: FakeOrchestrator, worker: AsyncWorker
) -> None:
    from streamorch.client.models import Desired

    fake.grant("a")
    await wait_until(lambda: "a" in worker.running, what="a runs")
    stale = Desired.from_json({**fake.answer(), "incarnation": 0, "assignments": []})
    assert worker._offer(stale, worker._epoch) is False
    older = Desired.from_json({**fake.answer(), "version": 0, "assignments": []})
    assert worker._offer(older, worker._epoch) is False
    assert set(worker.desired) == {"a"}


# -- backoff ----------------------------------------------------------------------------
def test_backoff_grows_and_is_capped(fake: FakeOrchestrator, calls: Calls, clock: Clock) -> None:
    w = make_worker(fake, calls, clock, max_backoff=1.0)
    delays = [w._backoff(n) for n in range(1, 12)]
    assert delays == sorted(delays)
    assert delays[0] < delays[3] < delays[-1]
    assert delays[-1] == 1.0
    w._random = lambda: 0.0  # full jitter on the upper half: never below half the cap
    assert w._backoff(20) == 0.5


async def test_server_errors_are_retried_while_the_streams_keep_running(
    fake: FakeOrchestrator, calls: Calls, worker: AsyncWorker
) -> None:
    fake.grant("a")
    await wait_until(lambda: "a" in worker.running, what="a runs")
    attempts: list[int] = []
    backoff = worker._backoff
    worker._backoff = lambda n: attempts.append(n) or backoff(n)  # type: ignore[method-assign]
    before = len(fake.of("heartbeat"))
    fake.fail("heartbeat", 503, times=3)
    fake.break_transport("heartbeat", times=2)
    await wait_until(lambda: len(fake.of("heartbeat")) >= before + 6, what="heartbeats again")
    assert [n for n in attempts if n <= 5][:5] == [1, 2, 3, 4, 5]  # one growing step per failure
    assert set(worker.running) == {"a"}
    assert not calls.revoked
    assert worker.registrations == 1


async def test_a_permanent_error_on_a_heartbeat_ends_run(
    fake: FakeOrchestrator, calls: Calls, clock: Clock
) -> None:
    from streamorch.client import APIError

    w = make_worker(fake, calls, clock)
    fake.grant("a")
    fake.fail("heartbeat", 422, "invalid_input", times=10)
    with pytest.raises(APIError) as info:
        await w.run()
    assert info.value.status == 422
    assert not w.running
