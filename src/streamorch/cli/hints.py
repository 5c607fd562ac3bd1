"""What to tell a person whose command could not talk to the orchestrator.

Each hint names the likely mistake and its fix, from the URL they gave and the error
they got: no scheme, https against a plain-HTTP server, a path such as `/v1` after the
base URL, a missing or wrong token.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from streamorch.client import errors

ADMIN_AUTH_FIX = "pass --token or set STREAMORCH_ADMIN_TOKEN to the server's admin token"
WORKER_AUTH_FIX = (
    "pass --token or set STREAMORCH_WORKER_TOKEN to the server's worker token "
    "(the admin token works too)"
)


def url_problem(servers: str) -> str | None:
    """Why `servers` can never work, or None."""
    from streamorch.client.http import split_servers

    try:
        split_servers(servers)
    except ValueError as exc:
        return str(exc)
    return None


def transport_hint(server: str, exc: errors.TransportError) -> str:
    """No server answered: the likely reason, with what to do."""
    cause = exc.__cause__ or exc
    text = f"{cause!r} {cause}".lower()
    if server.lower().startswith("https://") and ("ssl" in text or "wrong_version" in text):
        plain = "http://" + server[len("https://") :]
        return (
            f"{server} does not speak HTTPS (the orchestrator serves plain HTTP unless a "
            f"proxy in front of it terminates TLS): use {plain}"
        )
    return (
        f"no orchestrator answered at {server} ({cause}); check that it runs "
        "(`streamorch serve` or ./start-orchestrator.sh) and that --server / "
        "STREAMORCH_SERVER points at it"
    )


def api_hint(server: str, exc: errors.APIError, token_fix: str) -> str:
    """The server's message, with the fix for the mistakes a person can make here."""
    if exc.status == 401:
        return f"{exc.message} — {token_fix}"
    if exc.status == 404 and exc.code in ("not_found", "http_404"):
        path = urlsplit(server).path.rstrip("/")
        if path:
            base = server[: len(server) - len(urlsplit(server).path)] or server
            return (
                f"{server} answered 404: give the base URL without the path {path!r} "
                f"(for example {base})"
            )
    return exc.message
