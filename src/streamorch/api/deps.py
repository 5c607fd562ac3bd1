"""Request dependencies: the orchestrator, bearer tokens (constant time) and worker secrets.

Who may do what (docs/reference/worker-protocol.md, "Authentication"):

- no token configured: every call is open (a trusted network only);
- the admin token: every call; it also overrides a worker's secret (drain, deregister,
  read its assignments) and may force a registration over a live holder;
- the worker token: register, and the calls of a worker whose secret it sends.

A missing, malformed or wrong token is 401; a worker call without that worker's secret,
or `force=true` without the admin token, is 403.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from streamorch.config import Settings
from streamorch.core.service import Orchestrator
from streamorch.domain import credentials
from streamorch.ops.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_settings(request: Request) -> Settings:
    return get_runtime(request).settings


async def get_orchestrator(request: Request) -> Orchestrator:
    orch = get_runtime(request).orchestrator
    assert orch is not None, "requests are served only once the lifespan has started it"
    return orch


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
OrchestratorDep = Annotated[Orchestrator, Depends(get_orchestrator)]


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


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


async def require_admin(request: Request) -> None:
    settings = get_settings(request)
    admin = _secret(settings.admin_token)
    if admin is None:
        return
    given = _token(request)
    if not _matches(given, admin):
        worker = _secret(settings.worker_token)
        raise _denied(request, "the admin token", worker_token=_matches(given, worker))


async def require_diagnostics(request: Request) -> None:
    """/health/detailed and /metrics: the admin rule, unless DIAGNOSTICS_PUBLIC."""
    if not get_settings(request).diagnostics_public:
        await require_admin(request)


async def require_worker(request: Request) -> None:
    settings = get_settings(request)
    admin, worker = _secret(settings.admin_token), _secret(settings.worker_token)
    if admin is None and worker is None:
        return
    given = _token(request)
    if not (_matches(given, worker) or _matches(given, admin)):
        raise _denied(request, "the worker token (or the admin token)")


def is_admin(request: Request) -> bool:
    """The caller has the admin's authority: it sends the admin token, or none is set."""
    admin = _secret(get_settings(request).admin_token)
    return admin is None or _matches(_token(request), admin)


def worker_secret(request: Request) -> str | None:
    """The caller's `X-Worker-Secret`, if it sent one."""
    return request.headers.get(credentials.HEADER)


async def require_worker_secret(request: Request, worker_id: uuid.UUID) -> None:
    """The worker itself (its current secret) or an admin: 404 for an unknown worker."""
    await require_worker(request)
    if is_admin(request):
        return
    orch = await get_orchestrator(request)
    await orch.check_secret(worker_id, worker_secret(request))


def _denied(request: Request, what: str, *, worker_token: bool = False) -> HTTPException:
    """401 saying which of the three it is: no token, a malformed header, a wrong token."""
    header = request.headers.get("authorization")
    if not header:
        reason, message = "missing", f"no token sent: this call needs {what}"
    elif _token(request) is None:
        reason = "malformed"
        message = f"the Authorization header must read 'Bearer <token>'; this call needs {what}"
    elif worker_token:
        reason = "worker_token"
        message = f"the worker token was sent, but this call needs {what}"
    else:
        reason, message = "wrong", f"the token sent is not accepted: this call needs {what}"
    return HTTPException(
        status_code=401,
        detail={"message": message, "reason": reason},
        headers={"WWW-Authenticate": "Bearer"},
    )
