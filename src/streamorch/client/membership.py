"""Joining and leaving the fleet: the worker's register and deregister requests.

`register()` retries until a server takes the worker (transport errors, 5xx, and a name
still held by a live lease are worth waiting for) and raises at once, with the fix,
when no retry can help. `deregister()` waits for the last moves to finish, or gives up
once the deadline passed or no server answers: the lease then ends by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from streamorch.client import errors
from streamorch.client.http import Connection

log = logging.getLogger("streamorch.client.worker")


async def register(
    conn: Connection,
    body: dict[str, Any],
    *,
    clock: Callable[[], float],
    backoff: Callable[[int], float],
) -> tuple[float, dict[str, Any]]:
    """`POST /v1/workers/register` until accepted: (the `clock()` at sending, the answer)."""
    attempt = 0
    while True:
        sent = clock()
        try:
            data = await conn.request("POST", "/v1/workers/register", json=body)
        except errors.TransportError as exc:
            if "WRONG_VERSION_NUMBER" in str(exc.__cause__ or ""):
                # A plain-HTTP server answered a TLS handshake: no retry can fix that.
                raise errors.TransportError(
                    f"{conn.base_url} does not speak HTTPS: use http:// "
                    "(unless a proxy in front of the orchestrator terminates TLS)"
                ) from exc
            log.warning("cannot register: %s", exc, extra={"action": "register_retry"})
        except errors.APIError as exc:
            if not (exc.retryable or exc.name_in_use):
                raise registration_refused(exc, conn.base_url) from None
            log.warning("cannot register: %s", exc, extra={"action": "register_retry"})
        else:
            if not isinstance(data, dict):
                raise errors.APIError(200, "invalid_answer", f"not a registration: {data!r}")
            return sent, data
        attempt += 1
        await asyncio.sleep(backoff(attempt))


async def deregister(
    conn: Connection, worker_id: str | None, *, deadline: float, hurry: asyncio.Event
) -> bool:
    """`DELETE /v1/workers/{id}`, forced once `deadline` passed or `hurry` is set.

    True when the server took it; False when it gave up (the lease expires instead) or
    the worker was already unknown.
    """
    path = f"/v1/workers/{worker_id}"
    while True:
        force = time.monotonic() >= deadline or hurry.is_set()
        try:
            await conn.request("DELETE", path, params={"force": str(force).lower()})
        except errors.APIError as exc:
            if exc.status == 404:
                return False  # the server no longer knows it: nothing to leave
            if force or (exc.code != "worker_owns_streams" and not exc.retryable):
                log.warning("cannot deregister: %s", exc, extra={"action": "deregister"})
                return False
        except errors.TransportError as exc:
            log.warning(
                "cannot deregister (the lease will expire instead): %s",
                exc,
                extra={"action": "deregister"},
            )
            return False
        else:
            return True
        await asyncio.sleep(0.1)


def registration_refused(exc: errors.APIError, server: str) -> errors.APIError:
    """The server's refusal, with what to change for the causes one can fix."""
    if exc.status == 404:
        hint = (
            f"{server} answered 404 to POST /v1/workers/register: it is not the "
            "orchestrator's base URL (use http://HOST:PORT, without a path such as /v1)"
        )
    elif exc.status in (401, 403):
        hint = (
            f"{exc.message} — pass the worker token (or the admin token) as token= "
            "(`streamorch worker --token` / STREAMORCH_WORKER_TOKEN)"
        )
    else:
        return exc
    refused = errors.APIError(exc.status, exc.code, hint, exc.details)
    refused.__cause__ = exc
    return refused
