"""The operator's dashboard at /ui: server-rendered pages with live fragments (htmx).

`install(app)` adds its routes and static files. Everything it shows comes from
PostgreSQL through the orchestrator's own calls, so any replica serves it.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from streamorch.api.ui import security
from streamorch.api.ui.routes import router


class _Static(StaticFiles):
    """The vendored script and the stylesheet, with the dashboard's security headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                for name, value in security.HEADERS.items():
                    if name != "Cache-Control":  # static files may be cached
                        headers.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    static = resources.files("streamorch.api.ui") / "static"
    app.mount("/ui/static", _Static(directory=str(static)), name="ui-static")
    app.include_router(router)
