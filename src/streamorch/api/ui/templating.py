"""Jinja2 for the dashboard: autoescaped templates from this package, and their helpers."""

from __future__ import annotations

import json
from functools import cache
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from streamorch import __version__
from streamorch.api.ui import security, views
from streamorch.ops import exposure

HTMX = "htmx-2.0.11.min.js"  # vendored from the npm package htmx.org, with its licence
POLL = "every 3s"  # how often a page's live fragment is fetched again


def stream_url(key: str) -> str:
    return "/ui/stream?" + urlencode({"key": key})


def explain_url(key: str) -> str:
    return "/ui/explain?" + urlencode({"key": key})


def worker_url(worker_id: Any) -> str:
    return f"/ui/workers/{worker_id}"


def labels_text(labels: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), sort_keys=True, default=str)


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("streamorch.api.ui", "templates"),
        autoescape=True,  # every template, whatever its name: all output is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        age=views.age,
        iso=views.iso,
        labels=labels_text,
        kind=views.kind_of,
        json=compact_json,
    )
    env.globals.update(
        stream_url=stream_url,
        explain_url=explain_url,
        worker_url=worker_url,
        htmx=HTMX,
        poll=POLL,
        version=__version__,
        csrf_field=security.CSRF_FIELD,
    )
    return env


SET_TOKENS = "set STREAMORCH_ADMIN_TOKEN (and STREAMORCH_WORKER_TOKEN for the workers)"


def open_warning(request: Request) -> tuple[str, str] | None:
    """The warning and its fix when no admin token guards the dashboard: the log's own
    words when the API is reachable from other machines."""
    if security.admin_token(request) is not None:
        return None
    settings = request.app.state.runtime.settings
    if settings.worker_token is not None:
        return (
            "No STREAMORCH_ADMIN_TOKEN is set: this dashboard and every admin call of the API "
            "are open to anyone who can reach this port",
            "set STREAMORCH_ADMIN_TOKEN",
        )
    if exposure.exposed(settings):
        return exposure.open_api_warning(settings), exposure.OPEN_API_FIX
    return (
        f"No tokens are set: listening on {settings.orchestrator_host} only, this dashboard "
        "and the API are open to every user and process of this machine",
        SET_TOKENS,
    )


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    html = (
        environment()
        .get_template(name)
        .render(
            request=request,
            csrf=security.csrf_token(request),
            warning=open_warning(request),
            auth=security.admin_token(request) is not None,
            page=context.pop("page", None),
            **context,
        )
    )
    return HTMLResponse(html, status_code=status_code)
