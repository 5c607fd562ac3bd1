"""The dashboard's sessions, CSRF protection and security headers.

With an admin token configured, the operator signs in once with it; the browser then
holds only a session cookie: an expiry and a nonce signed with a key derived from the
admin token (HMAC-SHA256). Any replica can check it without shared state, and changing
the admin token ends every session. The token itself never reaches a URL, a page or a
log. Cookies are HttpOnly, SameSite=Strict and scoped to /ui (Secure over HTTPS).

Every state-changing request (POST) must carry the CSRF cookie's value in the form
field `csrf` or the `X-CSRF-Token` header (double submit: another site can neither
read nor send that cookie), and, when the browser says where it comes from, come from
this origin (`Sec-Fetch-Site`, `Origin`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "streamorch_session"
CSRF_COOKIE = "streamorch_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_LIFETIME_S = 12 * 3600
COOKIE_PATH = "/ui"

# No inline script or style anywhere: scripts and styles come from /ui/static only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def admin_token(request: Request) -> str | None:
    token = request.app.state.runtime.settings.admin_token
    return token.get_secret_value() if token is not None else None


def _key(token: str) -> bytes:
    return hmac.new(token.encode(), b"streamorch dashboard session v1", hashlib.sha256).digest()


def _sign(token: str, payload: str) -> str:
    mac = hmac.new(_key(token), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def new_session(token: str, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_LIFETIME_S)
    payload = f"{expires}.{secrets.token_urlsafe(16)}"
    return f"{payload}.{_sign(token, payload)}"


def valid_session(token: str, value: str | None, now: float | None = None) -> bool:
    if not value:
        return False
    payload, _, signature = value.rpartition(".")
    expires, _, _nonce = payload.partition(".")
    if not expires.isdigit() or int(expires) < (now or time.time()):
        return False
    return hmac.compare_digest(signature.encode(), _sign(token, payload).encode())


def token_matches(token: str, given: str) -> bool:
    return hmac.compare_digest(given.strip().encode(), token.encode())


def signed_in(request: Request) -> bool:
    """True when no admin token is configured (the dashboard is open) or the session is valid."""
    token = admin_token(request)
    return token is None or valid_session(token, request.cookies.get(SESSION_COOKIE))


def _cookie(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def start_session(response: Response, request: Request, token: str) -> None:
    _cookie(response, request, SESSION_COOKIE, new_session(token))


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def csrf_token(request: Request) -> str:
    """The request's CSRF value: the cookie's, or a new one that `finish` will set."""
    value = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None)
    if not value:
        value = request.state.new_csrf = secrets.token_urlsafe(32)
    return value


def same_origin(request: Request) -> bool:
    """What the browser says of where the request comes from, when it says anything.

    `Sec-Fetch-Site` (every current browser) is right behind any proxy; without it, an
    `Origin` must name this host (as the client or a proxy's `X-Forwarded-Host` saw it).
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")}
    return urlsplit(origin).netloc in hosts - {None}


def csrf_ok(request: Request, submitted: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    given = submitted or request.headers.get(CSRF_HEADER)
    if not cookie or not given:
        return False
    return hmac.compare_digest(cookie.encode(), given.encode()) and same_origin(request)


def finish(request: Request, response: Response) -> Response:
    """Security headers on every dashboard answer, and the CSRF cookie when it is new."""
    response.headers.update(HEADERS)
    new = getattr(request.state, "new_csrf", None)
    if new and not request.cookies.get(CSRF_COOKIE):
        _cookie(response, request, CSRF_COOKIE, new)
    return response


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a dashboard path only (no open redirect)."""
    if path and path.startswith("/ui") and not path.startswith("//") and "\\" not in path:
        return path
    return "/ui"
