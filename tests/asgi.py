"""The real application, lifespan and all, behind an in-process httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from streamorch.api.app import create_app
from streamorch.config import Settings


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
