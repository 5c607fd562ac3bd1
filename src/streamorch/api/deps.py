"""Request dependencies: the orchestrator and bearer-token checks (constant time)."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from streamorch.core.service import Orchestrator


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


async def require_admin(request: Request) -> None:
    settings = request.app.state.runtime.settings
    admin = _secret(settings.admin_token)
    if admin is None:
        return
    given = _token(request)
    if not _matches(given, admin):
        worker = _secret(settings.worker_token)
        raise _denied(request, "the admin token", worker_token=_matches(given, worker))


async def require_diagnostics(request: Request) -> None:
    """/health/detailed and /metrics: the admin rule, unless DIAGNOSTICS_PUBLIC."""
    if not request.app.state.runtime.settings.diagnostics_public:
        await require_admin(request)


async def require_worker(request: Request) -> None:
    settings = request.app.state.runtime.settings
    admin, worker = _secret(settings.admin_token), _secret(settings.worker_token)
    if admin is None and worker is None:
        return
    given = _token(request)
    if not (_matches(given, worker) or _matches(given, admin)):
        raise _denied(request, "the worker token (or the admin token)")


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
