"""How an `AsyncWorker` leaves: it reports a version from the start, `shutdown()` returns
on Python 3.11, and a drain never starts again what it stopped."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import pytest

from streamorch.client import AdminClient, APIError, AsyncWorker, TransportError
from streamorch.client.tasks import wait_event as _wait_event
from tests.sdk.conftest import ServerProcess
from tests.sdk.helpers import Calls, create_streams
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

HANG = 30.0  # far beyond any real shutdown: only a hang reaches it


class Recorder(httpx.AsyncBaseTransport):
    """The real network, with every heartbeat body kept for the test to read."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.heartbeats: list[dict] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/heartbeat"):
            self.heartbeats.append(json.loads(await request.aread()))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_loop_woken_and_cancelled_in_one_step_ends() -> None:
    # The heartbeat loop's shape. With `asyncio.wait_for(event.wait(), t)` in its place
    # this hangs on Python 3.11: the cancel arriving with the wake-up is swallowed.
    event = asyncio.Event()
    waits = 0

    async def loop() -> None:
        nonlocal waits
        while True:
            event.clear()
            waits += 1
            await _wait_event(event, 0.3)

    task = asyncio.create_task(loop())
    await wait_until(lambda: waits >= 1, what="the loop waits")
    event.set()
    task.cancel()
    async with asyncio.timeout(HANG):
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_leaving(server: ServerProcess) -> None:
    # One server for these, in turn (each leaves no worker behind).
    await https_against_a_plain_http_server_fails_at_once(server)
    await every_heartbeat_names_a_version_and_shutdown_returns(server)
    keys = [f"d{i}" for i in range(8)]
    async with AdminClient(server.url) as admin:
        await create_streams(admin, keys)
        await a_drain_that_times_out_never_starts_a_stream_again(server, admin, keys)
    await a_second_request_cuts_the_drain_short(server, keys)


async def https_against_a_plain_http_server_fails_at_once(server: ServerProcess) -> None:
    calls = Calls()
    plain = server.url.replace("http://", "https://")
    worker = AsyncWorker(plain, name="tls", on_assign=calls.on_assign, on_revoke=calls.on_revoke)
    with pytest.raises(TransportError, match="does not speak HTTPS: use http://"):
        async with asyncio.timeout(HANG):
            await worker.run()


async def every_heartbeat_names_a_version_and_shutdown_returns(server: ServerProcess) -> None:
    # On 3.11, shutdown() signalled and cancelled the heartbeat task in one step, and
    # asyncio.wait_for swallowed the cancel: with nothing to drain it hung every time.
    assert sys.version_info[:2] >= (3, 11)
    calls, recorder = Calls(), Recorder()
    worker = AsyncWorker(
        server.url,
        name="versioned",
        on_assign=calls.on_assign,
        on_revoke=calls.on_revoke,
        transport=recorder,
    )
    await worker.start()
    await wait_until(lambda: worker.version >= 1, what="the first answer applied")
    async with asyncio.timeout(HANG):
        await worker.shutdown()
    await recorder.aclose()

    versions = [beat["version"] for beat in recorder.heartbeats]
    assert versions, "no heartbeat sent"
    assert versions[0] == 0  # before any answer was applied: acknowledges no revoke
    assert all(isinstance(v, int) for v in versions), versions
    assert versions[-1] >= 1
    assert versions == sorted(versions)
    assert worker.drained is True
    assert not worker.interrupted


async def a_drain_that_times_out_never_starts_a_stream_again(
    server: ServerProcess, admin: AdminClient, keys: list[str]
) -> None:
    calls = Calls()
    worker = AsyncWorker(
        server.url,
        name="stuck",
        on_assign=calls.on_assign,
        on_revoke=calls.on_revoke,
        drain_timeout=0.5,  # no other worker: nothing can move, the drain times out
    )
    await worker.start()
    await wait_until(lambda: set(worker.running) == set(keys), what="all running")
    async with asyncio.timeout(HANG):
        await worker.shutdown()
    assert worker.drained is False
    assert not worker.interrupted

    # The journal of every start and stop: one start, then one stop, per stream.
    events = sorted(
        [(t, "start", a.stream) for t, a in calls.assigned]
        + [(t, "stop", a.stream) for t, a in calls.revoked]
    )
    for key in keys:
        assert [kind for _, kind, k in events if k == key] == ["start", "stop"], key
    workers = {w["name"]: w["status"] for w in await admin.list_workers("all")}
    assert workers["stuck"] == "left"
    for key in keys:
        assert (await admin.get_stream(key))["assignment"] is None


async def a_second_request_cuts_the_drain_short(server: ServerProcess, keys: list[str]) -> None:
    calls = Calls()
    worker = AsyncWorker(
        server.url,
        name="hurried",
        on_assign=calls.on_assign,
        on_revoke=calls.on_revoke,
        drain_timeout=HANG * 10,  # only the second request can end this drain
    )
    run = asyncio.create_task(worker.run())
    await wait_until(lambda: set(worker.running) == set(keys), what="all running")
    worker.request_shutdown()
    await wait_until(lambda: worker.draining, what="draining")
    worker.request_shutdown()
    async with asyncio.timeout(HANG):
        await run
    assert worker.interrupted
    assert worker.drained is False
    assert calls.revoked_keys() == set(keys)
    assert len(calls.assigned) == len(keys)  # nothing started again


async def test_a_request_while_registering_ends_run_at_once() -> None:
    calls = Calls()
    worker = AsyncWorker(
        "http://127.0.0.1:9",  # discard port: nothing answers, registration retries
        name="lonely",
        on_assign=calls.on_assign,
        on_revoke=calls.on_revoke,
        max_backoff=0.2,
    )
    run = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.registration is None and not run.done(), what="retrying")
    await asyncio.sleep(0)  # let run() reach its registration loop
    worker.request_shutdown()
    async with asyncio.timeout(HANG):
        await run
    assert worker.registration is None
    assert calls.assigned == []


def test_options_that_can_never_work_fail_at_construction() -> None:
    def noop(stream: object) -> None:
        return None

    with pytest.raises(ValueError, match="no scheme: write http://orchestrator:8001"):
        AsyncWorker("orchestrator:8001", name="w", on_assign=noop, on_revoke=noop)
    with pytest.raises(TypeError, match="on_assign must be a function"):
        AsyncWorker(name="w", on_assign=None, on_revoke=noop)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity"):
        AsyncWorker(name="w", on_assign=noop, on_revoke=noop, capacity=0)


@pytest.mark.parametrize(
    ("status", "code", "says"),
    [
        (401, "unauthorized", "STREAMORCH_WORKER_TOKEN"),
        (404, "not_found", "without a path such as /v1"),
    ],
)
async def test_a_refused_registration_fails_at_once_naming_the_fix(
    status: int, code: str, says: str
) -> None:
    calls: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        body = {"error": {"code": code, "message": "no token sent", "details": {}}}
        return httpx.Response(status, json=body)

    worker = AsyncWorker(
        "http://orchestrator:8001/v1",
        name="refused",
        on_assign=Calls().on_assign,
        on_revoke=Calls().on_revoke,
        transport=httpx.MockTransport(refuse),
    )
    with pytest.raises(APIError) as refused:
        async with asyncio.timeout(HANG):
            await worker.run()
    assert refused.value.status == status
    assert says in str(refused.value)
    assert len(calls) == 1  # not retried: it cannot fix itself
