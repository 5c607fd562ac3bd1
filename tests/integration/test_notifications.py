"""Long-polls wake on changes through Redis, and through PostgreSQL when Redis is down."""

from __future__ import annotations

import socket

import anyio
import httpx
import pytest

from streamorch.api.app import create_app
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _long_poll_sees_a_grant(client: httpx.AsyncClient, app) -> tuple[int, int]:
    """A long-poll that is already waiting when the stream is created is woken with it."""
    notifier = app.state.runtime.orchestrator.notifier
    worker = (await client.post("/v1/workers/register", json={"name": "w1"})).json()
    wid = worker["worker_id"]
    before = (await client.get(f"/v1/workers/{wid}/assignments")).json()["version"]
    result: dict = {}

    async def poll() -> None:
        response = await client.get(
            f"/v1/workers/{wid}/assignments", params={"version": before, "wait": 30}
        )
        result.update(response.json())

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        # The long-poll waits (it subscribed to its wake-ups) before the change is made.
        await wait_until(lambda: wid in notifier._waiters, timeout=10, what="the long-poll waits")
        await client.put("/v1/streams/s1", json={"url": "http://x"})
    assert [a["stream"] for a in result["assignments"]] == ["s1"]
    return before, result["version"]


async def _wait_listening(app, source: str) -> None:
    notifier = app.state.runtime.orchestrator.notifier
    with anyio.fail_after(10):
        while not notifier.listening[source]:
            await anyio.sleep(0.05)


async def test_long_poll_wakes_through_redis_and_postgres(api):
    await _wait_listening(api.app, "redis")
    await _wait_listening(api.app, "postgresql")
    before, after = await _long_poll_sees_a_grant(api, api.app)
    assert after > before
    notifier = api.app.state.runtime.orchestrator.notifier
    with anyio.move_on_after(5):  # the listeners receive shortly after the local wake-up
        while not (notifier.received["redis"] and notifier.received["postgresql"]):
            await anyio.sleep(0.05)
    assert notifier.received["redis"] > 0
    assert notifier.received["postgresql"] > 0


async def test_long_poll_wakes_through_postgres_when_redis_is_down(
    make_settings, postgres_server, database
):
    settings = make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0",
        RECONCILE_INTERVAL="30",  # only the wake-up after the change may place the stream
        LEASE_TTL="120",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://o") as client:
            await _wait_listening(app, "postgresql")
            before, after = await _long_poll_sees_a_grant(client, app)
    notifier = app.state.runtime.orchestrator.notifier
    assert after > before
    assert notifier.received["redis"] == 0
    assert notifier.received["postgresql"] > 0
