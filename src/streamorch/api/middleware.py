"""Request ids and request metrics, as one plain ASGI middleware (no per-request task).

Each request gets an id: the caller's `X-Request-ID` when it is a sane token, else a
new one. The id is echoed in the response header and put in the logging context, so
every record logged while the request runs carries `request_id` (and `worker` or
`stream` when the path names one). When the request
ends, its count and latency are recorded under the route *template*
(`/v1/workers/{worker_id}/heartbeat`), never the raw path, which would give one
series per worker.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamorch import logs
from streamorch.api import errors
from streamorch.api.metrics import Metrics

log = logging.getLogger(__name__)

HEADER = "X-Request-ID"
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given: str = value.decode("latin-1").strip()
            if _ACCEPTABLE.fullmatch(given):
                return given
            break  # unusable (too long, odd characters): never echo it into logs or headers
    return uuid.uuid4().hex


def path_fields(scope: Scope) -> dict[str, Any]:
    """The worker and stream the request's path names, once it is routed."""
    params = scope.get("path_params") or {}
    fields = {}
    if "worker_id" in params:
        fields["worker"] = str(params["worker_id"])
    if "key" in params:
        fields["stream"] = params["key"]
    return fields


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        token = logs.request_id.set(request_id)
        fields_token = logs.request_fields.set(lambda: path_fields(scope))
        started = time.perf_counter()
        status = 500
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status = message["status"]
                responded = True
                MutableHeaders(scope=message).append(HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # The one place a request's unexpected error is logged: it is not re-raised,
            # so neither Starlette nor uvicorn logs its traceback a second time.
            log.exception(
                "request failed: %s %s",
                scope["method"],
                scope["path"],
                extra={"action": "request_failed", "path": scope["path"], "request_id": request_id},
            )
            status = 500
            if not responded:
                await _internal_error(send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                scope["method"], template, status, time.perf_counter() - started
            )
            logs.request_id.reset(token)
            logs.request_fields.reset(fields_token)


async def _internal_error(send: Send) -> None:
    await errors.send_error(
        send, 500, "internal", "internal error; the server logged it with this request's id"
    )
