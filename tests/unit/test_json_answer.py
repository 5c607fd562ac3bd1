"""`json_answer` (the original protocol's unpaged lists, encoded in a worker thread)
answers the very bytes FastAPI answered when those routes returned a dict: the original
clients read them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response

from streamorch.api.pages import json_answer

pytestmark = pytest.mark.anyio

ANSWER = {
    "instances": [
        {
            "server_id": "fingerv7_2-ü€",  # any server id but whitespace and "/"
            "ip": "10.0.0.2",
            "port": None,
            "max_streams": 20,
            "assigned_streams": [1, 3, 10**18 - 1],
            "status": "active",
            "registered_at": "2026-12-01T19:00:00.123456+00:00",
            "pinned_streams": [],
        }
    ],
    "total": 1,
    "ok": True,
}


async def test_the_bytes_and_headers_are_those_of_a_returned_dict() -> None:
    app = FastAPI()

    @app.get("/dict")
    async def as_dict() -> dict[str, Any]:
        return ANSWER

    @app.get("/thread", response_model=dict[str, Any])
    async def in_thread() -> Response:
        return await json_answer(lambda: ANSWER)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        before, after = await client.get("/dict"), await client.get("/thread")
    assert after.status_code == before.status_code == 200
    assert after.content == before.content
    assert "€".encode() in after.content
    assert dict(after.headers) == dict(before.headers)
