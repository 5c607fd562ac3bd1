"""Checks of a worker's options that need no server, and the SDK's logging default."""

from __future__ import annotations

import logging


def check_worker_options(name: str, capacity: int, on_assign: object, on_revoke: object) -> None:
    """Raise `TypeError`/`ValueError` for options that can never work."""
    for what, callback in (("on_assign", on_assign), ("on_revoke", on_revoke)):
        if not callable(callback):
            raise TypeError(f"{what} must be a function or coroutine function, not {callback!r}")
    if not name:
        raise ValueError("name must be a non-empty string (unique in the fleet)")
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, not {capacity}")


def quiet_request_logs() -> None:
    """Keep httpx's one line per request out of the logs, unless its level was set."""
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET:
        httpx_log.setLevel(logging.WARNING)
