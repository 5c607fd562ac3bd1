"""An in-process stand-in for the worker endpoints of the API, behind `httpx.MockTransport`.

It keeps just enough state to drive `AsyncWorker` through the protocol: registrations
(incarnations, a secret), one desired set with a version, and scripted failures. Every
request is recorded, so tests can read what the worker sent.

    fake = FakeOrchestrator()
    worker = AsyncWorker("http://orch.test", name="w1", ..., transport=fake.transport())
    fake.grant("a")                       # the next answers carry stream "a"
    fake.fail("heartbeat", 503)           # the next heartbeat answers 503
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Sent:
    """One request the worker made."""

    method: str
    path: str
    body: Any
    headers: httpx.Headers
    params: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """`register`, `heartbeat`, `assignments`, `drain` or `deregister`."""
        if self.path.endswith("/register"):
            return "register"
        if self.method == "DELETE":
            return "deregister"
        return self.path.rsplit("/", 1)[-1]


class FakeOrchestrator:
    """See the module docstring. `heartbeat_interval_s` and `lease_ttl_s` go to the worker."""

    def __init__(
        self, *, heartbeat_interval_s: float = 0.02, lease_ttl_s: float = 10.0, secret: str = ""
    ) -> None:
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lease_ttl_s = lease_ttl_s
        self.secret = secret
        self.incarnation = 0
        self.version = 1
        self.streams: dict[str, int] = {}  # stream -> fencing token
        self.sent: list[Sent] = []
        self._failures: dict[str, deque[tuple[int, str] | Exception]] = {}
        self._tokens = 0
        self._changed = asyncio.Event()

    # -- what the tests change -------------------------------------------------------
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def grant(self, *streams: str) -> None:
        """Add `streams` to the desired set, each with a new fencing token."""
        for stream in streams:
            self._tokens += 1
            self.streams[stream] = self._tokens
        self._bump()

    def revoke(self, *streams: str) -> None:
        for stream in streams:
            self.streams.pop(stream, None)
        self._bump()

    def regrant(self) -> None:
        """Grant every stream again with a new token (as a re-registration does)."""
        self.grant(*list(self.streams))

    def fail(self, kind: str, status: int, code: str = "", *, times: int = 1) -> None:
        """The next `times` requests of `kind` answer `status` with error `code`."""
        self._failures.setdefault(kind, deque()).extend([(status, code)] * times)

    def break_transport(self, kind: str, *, times: int = 1) -> None:
        """The next `times` requests of `kind` fail to connect."""
        self._failures.setdefault(kind, deque()).extend(
            [httpx.ConnectError("connection refused")] * times
        )

    def heal(self) -> None:
        """Drop every scripted failure still queued."""
        self._failures.clear()

    def of(self, kind: str) -> list[Sent]:
        """The requests of `kind` sent so far."""
        return [s for s in self.sent if s.kind == kind]

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the endpoints ---------------------------------------------------------------
    async def _handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        sent = Sent(
            request.method, request.url.path, body, request.headers, dict(request.url.params)
        )
        self.sent.append(sent)
        queued = self._failures.get(sent.kind)
        if queued:
            failure = queued.popleft()
            if isinstance(failure, Exception):
                raise failure
            status, code = failure
            error = {"code": code or f"http_{status}", "message": "scripted", "details": {}}
            return httpx.Response(status, json={"error": error})
        if sent.kind == "register":
            self.incarnation += 1
            return httpx.Response(
                201,
                json={
                    "worker_id": "wid-1",
                    "name": body["name"],
                    "incarnation": self.incarnation,
                    "heartbeat_interval_s": self.heartbeat_interval_s,
                    "lease_ttl_s": self.lease_ttl_s,
                    "secret": self.secret or None,
                },
            )
        if sent.kind == "assignments":
            changed = self._changed
            if int(sent.params.get("version", 0)) >= self.version:
                # A long-poll: answer when the set changes (or soon, as a timeout would).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await changed.wait()
            return httpx.Response(200, json=self.answer())
        if sent.kind == "heartbeat":
            return httpx.Response(200, json=self.answer())
        if sent.kind == "drain":
            return httpx.Response(202, json={"status": "draining"})
        return httpx.Response(204)

    def answer(self) -> dict[str, Any]:
        """The desired set as a heartbeat or long-poll answers it."""
        return {
            "version": self.version,
            "incarnation": self.incarnation,
            "status": "active",
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "lease_ttl_s": self.lease_ttl_s,
            "assignments": [
                {"stream": s, "url": f"http://radio.test/{s}", "weight": 1, "token": t}
                for s, t in sorted(self.streams.items())
            ],
        }
