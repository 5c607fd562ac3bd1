"""`AsyncWorker` against a real server process: callbacks, self-fencing, 409, failover."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest

from streamorch.client import AdminClient, APIError, AsyncWorker, TransportError
from streamorch.client.http import Connection
from tests.e2e.harness import free_port
from tests.sdk.conftest import ServerProcess
from tests.sdk.helpers import Calls, create_streams
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def new_worker(server: ServerProcess | list[str], calls: Calls, name: str = "w1", **kw):
    servers = server if isinstance(server, list) else server.url
    return AsyncWorker(
        servers, name=name, on_assign=calls.on_assign, on_revoke=calls.on_revoke, **kw
    )


async def test_assign_and_revoke_callbacks(server: ServerProcess) -> None:
    calls = Calls()
    async with AdminClient(server.url) as admin, new_worker(server, calls) as worker:
        await create_streams(admin, ["a", "b", "c"])
        await wait_until(lambda: set(worker.running) == {"a", "b", "c"}, what="all three run")
        assert {a.stream for _, a in calls.assigned} == {"a", "b", "c"}
        first = {a.stream: a for _, a in calls.assigned}
        assert first["a"].url == "http://radio.example/a.mp3"
        assert all(a.token > 0 for a in first.values())

        await admin.delete_stream("b")
        await wait_until(lambda: calls.revoked_keys() == {"b"}, what="b revoked")
        await create_streams(admin, ["d"])
        await wait_until(lambda: set(worker.running) == {"a", "c", "d"}, what="d assigned")
        assert len(calls.assigned) == 4  # each stream started once: nothing restarted

        # The server sees what the worker reported.
        stream = await admin.get_stream("d")
        assert stream["assignment"]["worker"] == "w1"
        assert stream["assignment"]["token"] == worker.running["d"].token
    assert calls.revoked_keys() == {"a", "b", "c", "d"}  # closing stops everything


async def test_self_fences_before_the_lease_expires(server: ServerProcess) -> None:
    calls = Calls()
    async with AdminClient(server.url) as admin:
        await create_streams(admin, ["a", "b"])
    async with new_worker(server, calls, request_timeout=1.0) as worker:
        await wait_until(lambda: set(worker.running) == {"a", "b"}, what="both run")
        server.kill()  # the orchestrator is gone: no heartbeat can renew the lease
        lease: datetime | None = worker.lease_expires_at
        assert lease is not None
        await wait_until(lambda: calls.revoked_keys() == {"a", "b"}, what="self-fenced")
        assert worker.fenced
        assert worker.fences == 1
        deadline = worker.lease_expires_at
        assert deadline is not None
        for at, stream in calls.revoked:
            assert at < deadline.timestamp(), f"{stream.stream} stopped after the lease ended"

        server.start()  # back again: the worker returns to work without being restarted
        await wait_until(lambda: set(worker.running) == {"a", "b"}, timeout=60, what="rejoined")
        assert not worker.fenced


async def test_reregisters_after_being_superseded(server: ServerProcess) -> None:
    calls = Calls()
    async with AdminClient(server.url) as admin:
        await create_streams(admin, ["a", "b"])
    async with new_worker(server, calls) as worker:
        await wait_until(lambda: set(worker.running) == {"a", "b"}, what="both run")
        first = worker.incarnation
        assert first is not None
        # An admin registers another process under the same name: this incarnation is
        # fenced, and registers again once the usurper's lease has ended.
        async with httpx.AsyncClient(base_url=server.url) as raw:
            answer = await raw.post(
                "/v1/workers/register", json={"name": "w1"}, params={"force": "true"}
            )
        assert answer.status_code == 201
        usurper = answer.json()["incarnation"]

        await wait_until(lambda: worker.conflicts >= 1, what="409 seen")
        await wait_until(lambda: calls.revoked_keys() == {"a", "b"}, what="stopped everything")
        await wait_until(lambda: set(worker.running) == {"a", "b"}, what="running again")
        assert worker.incarnation is not None
        assert worker.incarnation > usurper > first
        assert worker.registrations == 2
        # Stopped before starting again: every stream's revoke precedes its second start.
        for key in ("a", "b"):
            starts = [t for t, a in calls.assigned if a.stream == key]
            stops = [t for t, a in calls.revoked if a.stream == key]
            assert len(starts) == 2
            assert stops[0] <= starts[1]


async def test_fails_over_to_the_next_server(server: ServerProcess) -> None:
    calls = Calls()
    dead = f"http://127.0.0.1:{free_port()}"
    async with AdminClient([dead, server.url]) as admin:
        await create_streams(admin, ["a"])
    async with new_worker([dead, server.url], calls) as worker:
        await wait_until(lambda: set(worker.running) == {"a"}, what="runs through the live URL")
        assert worker.server.rstrip("/") == server.url


async def test_error_tree() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        body = {"error": {"code": "lease_expired", "message": "register again", "details": {}}}
        return httpx.Response(409, json=body)

    conn = Connection("http://orchestrator", transport=httpx.MockTransport(answer))
    with pytest.raises(APIError) as caught:
        await conn.request("POST", "/v1/workers/x/heartbeat")
    assert (caught.value.status, caught.value.code) == (409, "lease_expired")
    assert caught.value.fenced
    assert not caught.value.retryable
    with pytest.raises(TransportError) as down:
        await conn.request("GET", "/down")
    assert isinstance(down.value.__cause__, httpx.ConnectError)
    await conn.aclose()
