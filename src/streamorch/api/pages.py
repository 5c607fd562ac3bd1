"""Answers that hold a page of rows are built and encoded off the event loop.

Turning 1,000 rows into JSON costs tens of milliseconds of Python; on the event loop
that is time every heartbeat in flight waits. In a worker thread the interpreter hands
the loop its turn every few milliseconds (the GIL's switch interval), so heartbeats are
answered while a page is being encoded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse, Response


async def json_page(build: Callable[[], dict[str, Any]]) -> Response:
    """The JSON answer `build()` returns, built and encoded in a worker thread."""
    body = await asyncio.to_thread(lambda: json.dumps(build(), separators=(",", ":")))
    return Response(body, media_type="application/json")


async def json_answer(build: Callable[[], Any]) -> JSONResponse:
    """`build()` answered as FastAPI answers a returned dict (Starlette's `JSONResponse`:
    UTF-8, non-ASCII unescaped, no spaces), built and encoded in a worker thread. For
    answers whose bytes are a contract, such as the original protocol's unpaged lists."""
    return await asyncio.to_thread(lambda: JSONResponse(build()))
