"""HTTP to one or several orchestrator servers, with failover and the client's errors.

`Connection` holds one `httpx.AsyncClient` per base URL and sends each request to the
current one; on a transport error or a 5xx it moves on to the next URL and tries again,
once per URL, before raising. Tests replace the network with `transport=` (for example
`httpx.MockTransport` or `httpx.ASGITransport`) or hand in a ready `client=`.

A worker's connection also carries the worker's secret (the `secret` of its last
registration) in `X-Worker-Secret` on every request. With `secret_file`, the secret
survives a restart: the next process proves it is the same worker and keeps its streams.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from streamorch.client import errors

log = logging.getLogger(__name__)

DEFAULT_SERVER = "http://127.0.0.1:8001"
SECRET_HEADER = "X-Worker-Secret"  # noqa: S105 - a header's name, not a secret


def split_servers(servers: str | Sequence[str] | None) -> list[str]:
    """`"http://a,http://b"` or a list of URLs → the list; the default when empty."""
    if servers is None:
        return [DEFAULT_SERVER]
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    urls = [u.strip().rstrip("/") for u in items if u and u.strip()]
    for url in urls:
        check_server_url(url)
    return urls or [DEFAULT_SERVER]


def check_server_url(url: str) -> None:
    """Raise `ValueError` naming the fix when `url` can never reach a server."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"server URL {url!r} has no scheme: write http://{url} (or https://{url})")
    if scheme.lower() not in ("http", "https"):
        raise ValueError(f"server URL {url!r}: the scheme must be http:// or https://")
    if not rest or rest.startswith("/"):
        raise ValueError(f"server URL {url!r} names no host: write http://HOST:PORT")


class Connection:
    """Requests to the first server that answers; see the module docstring.

    Args:
        servers: Base URL(s), a list or comma-separated; `DEFAULT_SERVER` when empty.
        token: Sent as `Authorization: Bearer <token>` when given.
        client: A ready `httpx.AsyncClient` to use alone (not closed by `aclose()`).
        transport: An httpx transport for the clients created here (tests).
        timeout: Seconds each request may take (`request(timeout=)` overrides it).
        secret_file: A file (kept 0600) holding the worker's secret between processes.
    """

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 5.0,
        secret_file: str | os.PathLike[str] | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self.secret_file = Path(secret_file) if secret_file is not None else None
        self.worker_secret = _read_secret(self.secret_file)
        self._owned: list[httpx.AsyncClient] = []
        if client is not None:
            if token:
                client.headers.update(headers)
            self._clients = [client]
        else:
            self._clients = [
                httpx.AsyncClient(
                    base_url=url, headers=headers, timeout=timeout, transport=transport
                )
                for url in split_servers(servers)
            ]
            self._owned = list(self._clients)
        self._current = 0
        self.failovers = 0

    @property
    def base_url(self) -> str:
        """The base URL requests go to now."""
        return str(self._clients[self._current].base_url)

    def remember_secret(self, secret: str | None) -> None:
        """Send `secret` from now on (and keep it in `secret_file`, readable by the owner only)."""
        self.worker_secret = secret
        if self.secret_file is None or not secret:
            return
        try:
            self.secret_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.secret_file.parent, prefix=".secret-")
            with os.fdopen(fd, "w") as out:  # mkstemp creates it 0600
                out.write(secret)
            os.replace(tmp, self.secret_file)
        except OSError as exc:
            log.warning(
                "cannot keep the worker secret in %s: %s (a restart will wait for the old "
                "lease to end)",
                self.secret_file,
                exc,
                extra={"action": "secret_not_saved"},
            )

    async def aclose(self) -> None:
        """Close the clients this connection created."""
        for client in self._owned:
            await client.aclose()
        self._owned.clear()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The decoded JSON answer (None when empty); `ClientError` otherwise."""
        last: errors.ClientError | None = None
        for _ in range(len(self._clients)):
            index = self._current
            client = self._clients[index]
            try:
                response = await client.request(
                    method,
                    path,
                    json=json,
                    params=params,
                    timeout=timeout or self.timeout,
                    headers={SECRET_HEADER: self.worker_secret} if self.worker_secret else None,
                )
            except httpx.TransportError as exc:
                last = errors.TransportError(f"{method} {client.base_url}{path}: {exc!r}")
                last.__cause__ = exc
                self._next(index)
                continue
            if response.status_code < 400:
                return response.json() if response.content else None
            error = _api_error(response)
            if not error.retryable:
                raise error
            last = error
            self._next(index)
        assert last is not None
        raise last

    def _next(self, index: int) -> None:
        if len(self._clients) > 1 and index == self._current:
            self._current = (index + 1) % len(self._clients)
            self.failovers += 1
            log.info("switching server", extra={"action": "failover", "server": self.base_url})


def _api_error(response: httpx.Response) -> errors.APIError:
    code, message = f"http_{response.status_code}", response.text[:500]
    details: dict[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code", code))
        message = str(error.get("message", message))
        details = error.get("details") or {}
    return errors.APIError(response.status_code, code, message, details)


def _read_secret(path: Path | None) -> str | None:
    if path is None:
        return None
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return path.read_text().strip() or None
    return None
