"""Request body size limits, enforced before the body is parsed: by the declared
`Content-Length` at once, and while a chunked body arrives."""

from __future__ import annotations

import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_LIMIT = 1 * 2**20  # 1 MiB: any single-object call
BULK_LIMIT = 64 * 2**20  # 64 MiB: about 200,000 streams in one bulk call


class BodySizeLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = BULK_LIMIT if scope["path"].endswith("/bulk") else DEFAULT_LIMIT
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        received = 0
        exceeded = False

        async def limited() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            # FastAPI turns any error while reading a body into its own 400: once the
            # limit was crossed, whatever the app answers is replaced by the 413.
            if not exceeded:
                await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, limited, guarded)
        if exceeded:
            await _too_large(send, limit)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    payload = json.dumps(
        {
            "error": {
                "code": "too_large",
                "message": f"request body exceeds {limit // 2**20} MiB; split it into smaller calls",
                "details": {"limit_bytes": limit},
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
