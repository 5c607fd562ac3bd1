"""Connection limits (api/limits.py): a client trickling its request headers is cut off,
and the server keeps answering everyone else."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import httpx
import pytest

from tests.asgi import running_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SLOW_CLIENTS = 40
# A guard against a hung test, not a timing goal: the server cuts slow clients after 3 s.
GUARD_S = 30.0


@pytest.fixture
def limited_settings(make_settings, postgres_server, database, redis_url):
    return make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=redis_url,
        HTTP_HEADER_TIMEOUT="3",
        HTTP_MAX_CONNECTIONS=str(SLOW_CLIENTS - 10),
    )


async def _trickle(host: str, port: int, closed: list[bool]) -> None:
    """Send a request's headers one byte every 0.2 s, forever; record when the server
    closes the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    request = b"GET /ready HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 10_000
    try:
        for byte in request:
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                    closed.append(True)  # the server hung up
                    return
        raise AssertionError("the server kept a trickling client for its whole request")
    except ConnectionError:
        closed.append(True)
    finally:
        writer.close()


async def test_slow_clients_are_cut_off_and_ready_keeps_answering(limited_settings):
    with running_server(limited_settings) as base:
        url = urlsplit(base)
        closed: list[bool] = []
        tasks = [
            asyncio.create_task(_trickle(url.hostname, url.port, closed))
            for _ in range(SLOW_CLIENTS)
        ]
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                # More slow connections than the limit allows: the server refuses new
                # requests rather than opening without bound...
                async def refused() -> bool:
                    return await _status(client) == 503

                await wait_until(refused, timeout=GUARD_S, what="503 at the limit")
                # ...and, as each slow client runs out of time, every one is cut off
                # although it keeps sending, and readiness answers again.
                await asyncio.wait_for(asyncio.gather(*tasks), GUARD_S)
                assert closed == [True] * SLOW_CLIENTS
                assert (await client.get("/ready")).status_code == 200
        finally:
            for task in tasks:
                task.cancel()


async def _status(client: httpx.AsyncClient) -> int:
    try:
        response = await client.get("/ready")
    except httpx.TransportError:
        return 0
    if response.status_code == 503 and "error" in response.json():
        assert response.json()["error"]["code"] == "too_many_connections"
        assert response.headers["retry-after"]
    return response.status_code
