"""Errors as `{"error": {"code", "message", "details"}}`, mapped from the domain tree in one table."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from streamorch.domain import errors

log = logging.getLogger(__name__)

STATUS = {
    errors.NotFound: 404,
    errors.Superseded: 409,
    errors.LeaseExpired: 409,
    errors.Conflict: 409,
    errors.InvalidInput: 422,
    errors.Forbidden: 403,
}


def body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _status_for(exc: errors.StreamorchError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "request"


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.StreamorchError)
    async def domain_error(request: Request, exc: errors.StreamorchError) -> JSONResponse:
        status = _status_for(exc)
        code = getattr(exc, "code", "error")
        details = dict(getattr(exc, "details", {}) or {})
        if status == 500:
            log.error(
                "unhandled domain error: %s",
                exc,
                exc_info=exc,
                extra={"action": "request_failed", "path": request.url.path},
            )
            return JSONResponse(body("internal", "internal error; see the server log"), 500)
        return JSONResponse(body(code, str(exc), details), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{_location(tuple(err.get('loc', ())))}: {message}")
        shown = "; ".join(problems[:10]) + (
            f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        )
        # A client's mistake: one line, no stack trace, at a level that a flood of
        # them cannot turn into a flood of warnings.
        log.info(
            "invalid request: %s",
            shown[:300],
            extra={"action": "invalid_request", "path": request.url.path},
        )
        return JSONResponse(
            body("invalid_input", f"invalid request: {shown}", {"problems": problems[:100]}),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            404: "not_found",
            405: "method_not_allowed",
            400: "bad_request",
            413: "too_large",
            401: "unauthorized",
            403: "forbidden",
        }.get(exc.status_code, "http_error")
        message, details = str(exc.detail), None
        if isinstance(exc.detail, dict):  # {"message": ..., other keys: details}
            details = {k: v for k, v in exc.detail.items() if k != "message"}
            message = str(exc.detail.get("message", ""))
        return JSONResponse(
            body(code, message, details),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(errors.UnstorableValue)
    async def unstorable(request: Request, exc: Exception) -> JSONResponse:
        # A backstop: validation refuses what PostgreSQL cannot store, so reaching this
        # means a rule is missing there. Still the client's 422, logged in one line.
        log.warning(
            "database refused a value: %s",
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            extra={"action": "invalid_value", "path": request.url.path},
        )
        return JSONResponse(
            body(
                "invalid_value",
                "a value in the request cannot be stored (for example a NUL character, a "
                "number out of range or not finite): correct it and retry",
            ),
            status_code=422,
        )

    @app.exception_handler(errors.StoreUnavailable)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning(
            "database unavailable: %s",
            exc,
            extra={"action": "database_unavailable", "path": request.url.path},
        )
        return JSONResponse(
            body(
                "database_unavailable",
                "PostgreSQL is unavailable; retry shortly (workers: keep running what you have "
                "until your lease margin)",
            ),
            status_code=503,
            headers={"Retry-After": "2"},
        )


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer `{"error": …}` straight through ASGI, for the layers below FastAPI's handlers
    (body limits, connection limits, the last-resort 500)."""
    payload = json.dumps(
        {"error": {"code": code, "message": message, "details": details or {}}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
