"""Limits that keep one client from exhausting the server.

- Body size, enforced before the body is parsed: by the declared `Content-Length` at
  once, and while a chunked body arrives (`BodySizeLimit`).
- Connections (`server_config`): a client must send a request's line and headers within
  `HTTP_HEADER_TIMEOUT` of connecting (or of starting its next request on a kept-alive
  connection), else the connection is closed. uvicorn has no such timeout: its
  keep-alive timer runs only between requests, and every byte received cancels it, so
  a client trickling one header byte every few seconds held a connection (a file
  descriptor) forever. Past `HTTP_MAX_CONNECTIONS` open connections (or requests in
  progress) new requests get a 503 in the API's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from streamorch.api import errors
from streamorch.config import Settings

log = logging.getLogger(__name__)

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
    await errors.send_error(
        send,
        413,
        "too_large",
        f"request body exceeds {limit // 2**20} MiB; split it into smaller calls",
        {"limit_bytes": limit},
    )


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers, and the
    connection cap answered in the API's error shape (uvicorn's own is plain text)."""

    header_timeout: float = 10.0
    max_connections: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # the next request on a kept-alive connection: its first byte

    def on_headers_complete(self) -> None:
        self._disarm()
        limit = self.max_connections
        if limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit):
            log.warning(
                "over HTTP_MAX_CONNECTIONS (%d): answering 503",
                limit,
                extra={"action": "connection_limit"},
            )
            app, self.app = self.app, _over_the_limit  # for this request only
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expired(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.info(
                "closed a connection that sent no complete request headers in %g s",
                self.header_timeout,
                extra={"action": "header_timeout", "client": f"{self.client}"},
            )
            self.transport.close()


async def _over_the_limit(scope: Scope, receive: Receive, send: Send) -> None:
    await errors.send_error(
        send,
        503,
        "too_many_connections",
        "the server has as many connections as it accepts (HTTP_MAX_CONNECTIONS); retry shortly",
        headers=[(b"retry-after", b"1"), (b"connection", b"close")],
    )


def server_config(app: ASGIApp, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration with the connection limits of `settings`."""
    protocol = type(
        "HeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {
            "header_timeout": settings.http_header_timeout,
            "max_connections": settings.http_max_connections,
        },
    )
    return uvicorn.Config(app, http=protocol, **options)
