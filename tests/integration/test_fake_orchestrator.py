"""The SDK's unit tests talk to tests/support/fake_orchestrator.py; this keeps it honest.

The same exchange a worker has — register, long-poll, heartbeat, drain, deregister — is
run against the fake and against the real application, and what the SDK reads of each
answer (status code, keys, value types, a granted stream's fields) must agree.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.asgi import serving
from tests.support.fake_orchestrator import FakeOrchestrator
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def shape(value: Any) -> Any:
    """What the SDK relies on: keys and value types, not the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


async def exchange(client: httpx.AsyncClient, granted: Any) -> list[tuple[str, int, Any]]:
    """A worker's life, recorded as (step, status, shape of the answer)."""
    seen: list[tuple[str, int, Any]] = []

    def record(step: str, response: httpx.Response) -> Any:
        body = response.json() if response.content else None
        seen.append((step, response.status_code, shape(body)))
        return body

    reg = record(
        "register",
        await client.post("/v1/workers/register", json={"name": "contract", "capacity": 5}),
    )
    wid, headers = reg["worker_id"], {"X-Worker-Secret": reg["secret"] or ""}
    await granted()
    desired = record(
        "long-poll",
        await client.get(
            f"/v1/workers/{wid}/assignments", params={"version": 0, "wait": 5}, headers=headers
        ),
    )
    body = {
        "incarnation": reg["incarnation"],
        "running": [a["stream"] for a in desired["assignments"]],
        "version": desired["version"],
        "metrics": {},
    }
    record(
        "heartbeat",
        await client.post(f"/v1/workers/{wid}/heartbeat", json=body, headers=headers),
    )
    record("drain", await client.post(f"/v1/workers/{wid}/drain", headers=headers))
    # Forced, as the SDK does once its drain deadline passed: unforced, the real server
    # answers 409 worker_owns_streams until the revokes are acknowledged (the fake never).
    record(
        "deregister",
        await client.delete(f"/v1/workers/{wid}", params={"force": "true"}, headers=headers),
    )
    return seen


async def test_the_fake_answers_as_the_real_orchestrator(engine_settings):
    fake = FakeOrchestrator(secret="s3cret")

    async def fake_grant() -> None:
        fake.grant("contract/1")

    async with httpx.AsyncClient(transport=fake.transport(), base_url="http://fake") as client:
        by_fake = await exchange(client, fake_grant)

    async with serving(engine_settings) as client:

        async def real_grant() -> None:
            put = await client.put("/v1/streams/contract/1", json={"url": "http://radio/1"})
            assert put.status_code in (200, 201)

            async def placed() -> bool:
                found = (await client.get("/v1/streams/contract/1")).json()
                return found.get("assignment") is not None

            await wait_until(placed, timeout=30, what="the stream placed on the worker")

        by_real = await exchange(client, real_grant)

    assert [step for step, _, _ in by_fake] == [step for step, _, _ in by_real]
    for (step, fake_status, fake_shape), (_, real_status, real_shape) in zip(
        by_fake, by_real, strict=True
    ):
        assert fake_status == real_status, step
        if isinstance(real_shape, dict):
            # The fake may leave out what the SDK never reads, never add or retype a key.
            extra = set(fake_shape) - set(real_shape)
            assert not extra, (step, extra)
            for key in fake_shape:
                assert fake_shape[key] == real_shape[key], (step, key)
        else:
            assert fake_shape == real_shape, step
