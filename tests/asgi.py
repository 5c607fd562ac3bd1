"""The real application, lifespan and all, behind an in-process httpx client, or served
by uvicorn in a thread with the production connection limits."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import uvicorn

from streamorch.api import limits
from streamorch.api.app import create_app
from streamorch.config import Settings
from tests.e2e.harness import free_port


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client on `create_app(settings)` with its lifespan run (pool, reconciler, notifier).

    The app is at `client.app`.
    """
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://orchestrator") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


@contextmanager
def running_server(settings: Settings) -> Iterator[str]:
    """`create_app(settings)` under uvicorn (as `streamorch serve` configures it) in a
    thread with its own event loop; yields the base URL."""
    port = free_port()
    config = limits.server_config(
        create_app(settings),
        settings,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the server failed to start"
        assert time.monotonic() < deadline, "the server did not start in 60 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
