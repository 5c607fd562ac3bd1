"""What the single server and each server process share: the event loop, and a quick stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (a dependency on Linux): cheaper I/O per request."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def release_long_polls(app: FastAPI) -> None:
    """Answer every waiting long-poll now, so a stopping server does not wait for them."""
    runtime = getattr(app.state, "runtime", None)
    if runtime is not None and runtime.orchestrator is not None:
        runtime.orchestrator.notifier.release_all()
