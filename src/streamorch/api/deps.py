"""Request dependencies: the orchestrator, bearer tokens (constant time) and worker secrets.

Who may do what (docs/reference/worker-protocol.md, "Authentication"):

- no token configured: every call is open (a trusted network only);
- the admin token: every call; it also overrides a worker's secret (drain, deregister,
  read its assignments) and may force a registration over a live holder;
- the worker token: register, and the calls of a worker whose secret it sends.

A missing or unknown token is 401; a known token without the authority is 403.
"""

from __future__ import annotations

import hmac
import uuid

from fastapi import HTTPException, Request

from streamorch.core.service import Orchestrator
from streamorch.domain import credentials


async def orchestrator(request: Request) -> Orchestrator:
    return request.app.state.runtime.orchestrator


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value else None


def _matches(given: str | None, expected: str | None) -> bool:
    return (
        given is not None
        and expected is not None
        and hmac.compare_digest(given.encode(), expected.encode())
    )


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


def _tokens(request: Request) -> tuple[str | None, str | None]:
    settings = request.app.state.runtime.settings
    return _secret(settings.admin_token), _secret(settings.worker_token)


def is_admin(request: Request) -> bool:
    """The caller has the admin's authority: it sends the admin token, or none is set."""
    admin, _ = _tokens(request)
    return admin is None or _matches(_token(request), admin)


async def require_admin(request: Request) -> None:
    admin, worker = _tokens(request)
    if admin is None:
        return
    given = _token(request)
    if _matches(given, admin):
        return
    if _matches(given, worker):
        raise _forbidden("this call needs the admin token; the worker token may not make it")
    raise _denied("an admin token")


async def require_diagnostics(request: Request) -> None:
    """/health/detailed and /metrics: the admin rule, unless DIAGNOSTICS_PUBLIC."""
    if not request.app.state.runtime.settings.diagnostics_public:
        await require_admin(request)


async def require_worker(request: Request) -> None:
    admin, worker = _tokens(request)
    if admin is None and worker is None:
        return
    given = _token(request)
    if not (_matches(given, worker) or _matches(given, admin)):
        raise _denied("a worker or admin token")


def worker_secret(request: Request) -> str | None:
    """The caller's `X-Worker-Secret`, if it sent one."""
    return request.headers.get(credentials.HEADER)


async def require_worker_secret(request: Request, worker_id: uuid.UUID) -> None:
    """The worker itself (its current secret) or an admin: 404 for an unknown worker."""
    await require_worker(request)
    orch: Orchestrator = request.app.state.runtime.orchestrator
    if is_admin(request):
        return
    await orch.check_secret(worker_id, worker_secret(request))


def _denied(what: str) -> HTTPException:
    return HTTPException(
        status_code=401,
        detail=f"this call needs {what}: send 'Authorization: Bearer <token>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _forbidden(message: str) -> HTTPException:
    return HTTPException(status_code=403, detail=message)
