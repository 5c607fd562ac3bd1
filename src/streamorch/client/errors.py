"""The client's errors.

    ClientError
    ├── TransportError    no server could be reached (connection refused, timeout, reset)
    └── APIError          a server answered with an error: status, code, message, details

The client never raises httpx exceptions: the driver's error is kept as `__cause__`.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Root of every error the client raises."""


class TransportError(ClientError):
    """No server answered: the request may or may not have reached one."""


class APIError(ClientError):
    """A server answered with a 4xx or 5xx status and the error body of API.md.

    Attributes `status` (HTTP status), `code` (the error's slug, e.g. `lease_expired`),
    `message` (what is wrong and what to do) and `details` (a dict) come from the answer.
    """

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}

    @property
    def retryable(self) -> bool:
        """A 5xx (or 429): the same request may succeed later or on another server."""
        return self.status >= 500 or self.status == 429

    @property
    def fenced(self) -> bool:
        """The worker must stop everything and register again (409 or 404 on a worker call,
        or 403 when the server no longer takes its secret)."""
        return (
            self.status == 404
            or (self.status == 409 and self.code in ("superseded", "lease_expired"))
            or (
                self.status == 403
                and self.code in ("invalid_worker_secret", "worker_secret_required")
            )
        )

    @property
    def name_in_use(self) -> bool:
        """Registering: a live worker holds the name; retry once its lease has ended."""
        return self.status == 409 and self.code == "name_in_use"
