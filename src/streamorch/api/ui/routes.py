"""The dashboard's pages, fragments and actions under /ui.

A page is rendered whole on the server; its live part is a fragment of the same
template, which htmx fetches again every few seconds (one small request per open
page: the `HX-Request` header asks for the fragment alone). Actions are plain form
POSTs, checked for CSRF, answered with a redirect back to the page (post/redirect/get),
so every page also works without script.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute

from streamorch.api import deps
from streamorch.api.schemas import KEY_PATTERN
from streamorch.api.ui import security, views
from streamorch.api.ui.templating import render
from streamorch.core.ports import DashboardReads
from streamorch.core.service import Orchestrator
from streamorch.domain import errors
from streamorch.domain.records import StreamSpec
from streamorch.ops.runtime import Runtime

PAGE_SIZE = 50
FORM_TYPE = "application/x-www-form-urlencoded"
LIVE_EVENTS = 50
_KEY = re.compile(KEY_PATTERN)
_STATES = ("assigned", "moving", "unassigned")
_WORKER_FILTERS = ("live", "active", "draining", "expired", "left", "all")


class SignInRequired(Exception):
    pass


class UIRoute(APIRoute):
    """Security headers on every answer; errors as pages, not JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                response = _to_login(request)
            except errors.StoreUnavailable:
                response = render(
                    request,
                    "error.html",
                    {
                        "title": "PostgreSQL is unavailable",
                        "message": "The dashboard reads everything from PostgreSQL; this page "
                        "comes back when it answers again.",
                    },
                    status_code=503,
                )
            except errors.StreamorchError as exc:
                response = _error_page(request, exc)
            return security.finish(request, response)

        return route


router = APIRouter(route_class=UIRoute, include_in_schema=False)


def _runtime(request: Request) -> Runtime:
    return deps.get_runtime(request)


def _orch(request: Request) -> Orchestrator:
    orch = _runtime(request).orchestrator
    assert orch is not None, "pages are served only once the lifespan has started it"
    return orch


def _store(request: Request) -> DashboardReads:
    dashboard = _orch(request).dashboard
    if dashboard is None:
        raise RuntimeError("the orchestrator was built without the dashboard's reads")
    return dashboard


def _guard(request: Request) -> None:
    if not security.signed_in(request):
        raise SignInRequired


def _fragment(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":  # an action cannot be replayed by a redirect
        target = "/ui"
    if _fragment(request):  # a poll after the session ended: htmx moves the whole page
        return Response(status_code=204, headers={"HX-Redirect": "/ui/login"})
    return RedirectResponse("/ui/login?" + urlencode({"next": target}), status_code=303)


def _error_page(request: Request, exc: errors.StreamorchError) -> Response:
    status = 404 if isinstance(exc, errors.NotFound) else 409
    if isinstance(exc, errors.InvalidInput):
        status = 422
    return render(
        request, "error.html", {"title": "Not done", "message": str(exc)}, status_code=status
    )


def _text(request: Request, name: str, limit: int = 200) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value[:limit] or None


async def _form(request: Request) -> dict[str, str]:
    """The dashboard's forms are URL-encoded (no file uploads); anything else reads as empty,
    and so fails the CSRF check."""
    if request.headers.get("content-type", "").split(";")[0].strip() != FORM_TYPE:
        return {}
    fields = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=20)
    return {name: values[0] for name, values in fields.items()}


def _check_csrf(request: Request, form: dict[str, str]) -> Response | None:
    if security.csrf_ok(request, form.get(security.CSRF_FIELD)):
        return None
    return render(
        request,
        "error.html",
        {
            "title": "Request refused",
            "message": "This form is stale or came from another site (CSRF check failed): "
            "reload the page and try again.",
        },
        status_code=403,
    )


# -- sign-in -------------------------------------------------------------------
@router.get("/")
async def root() -> Response:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui/login")
async def login_page(request: Request) -> Response:
    if security.admin_token(request) is None:
        return RedirectResponse("/ui", status_code=303)
    return render(
        request, "login.html", {"next": security.safe_next(request.query_params.get("next"))}
    )


@router.post("/ui/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    if (refused := _check_csrf(request, form)) is not None:
        return refused
    token = security.admin_token(request)
    target = security.safe_next(form.get("next"))
    if token is None:
        return RedirectResponse(target, status_code=303)
    if not security.token_matches(token, form.get("token", "")):
        return render(
            request,
            "login.html",
            {"next": target, "failed": True},
            status_code=401,
        )
    response = RedirectResponse(target, status_code=303)
    security.start_session(response, request, token)
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    form = await _form(request)
    if (refused := _check_csrf(request, form)) is not None:
        return refused
    response = RedirectResponse("/ui/login", status_code=303)
    security.end_session(response)
    return response


# -- overview ------------------------------------------------------------------
@router.get("/ui")
async def overview(request: Request) -> Response:
    _guard(request)
    data = await _overview(request).read()
    template = "_overview_poll.html" if _fragment(request) else "overview.html"
    return render(request, template, {"page": "overview", **data})


@router.get("/ui/activity")
async def activity(request: Request) -> Response:
    _guard(request)
    return render(request, "_chart.html", {"chart": await _overview(request).chart()})


def _overview(request: Request) -> views.Overview:
    extras = _runtime(request).extras
    if "overview" not in extras:
        extras["overview"] = views.Overview(_runtime(request), _orch(request), _store(request))
    overview: views.Overview = extras["overview"]
    return overview


# -- workers -------------------------------------------------------------------
@router.get("/ui/workers")
async def workers(request: Request) -> Response:
    _guard(request)
    show = request.query_params.get("show", "live")
    show = show if show in _WORKER_FILTERS else "live"
    name = _text(request, "name")
    try:
        offset = max(0, int(request.query_params.get("offset", "0")))
    except ValueError:
        offset = 0
    status = show if show in ("active", "draining", "expired", "left") else None
    extras = _runtime(request).extras
    if "fleet" not in extras:
        extras["fleet"] = views.Fleet(_orch(request))
    rows = await extras["fleet"].rows(status)
    if show == "live":
        rows = [r for r in rows if r["status"] in ("active", "draining")]
    if name:
        rows = [r for r in rows if name.lower() in r["name"].lower()]
    context = {
        "page": "workers",
        "rows": rows[offset : offset + PAGE_SIZE],
        "total": len(rows),
        "offset": offset,
        "page_size": PAGE_SIZE,
        "show": show,
        "filters": _WORKER_FILTERS,
        "name": name or "",
        "query": urlencode({"show": show, "name": name or "", "offset": offset}),
    }
    template = "_workers.html" if _fragment(request) else "workers.html"
    return render(request, template, context)


@router.get("/ui/workers/{worker_id}")
async def worker(request: Request, worker_id: str) -> Response:
    _guard(request)
    wid = views.parse_uuid(worker_id)
    row = await _store(request).worker(wid) if wid else None
    if wid is None or row is None:
        raise errors.NotFound("worker", worker_id)
    cursor = _text(request, "cursor") or ""
    store = _store(request)
    events = await store.recent_events(limit=LIVE_EVENTS, worker=wid)
    context: dict[str, Any] = {"page": "workers", "w": row, "events": events}
    if _fragment(request):
        return render(request, "_worker.html", context)
    streams = await store.worker_streams(wid, after=cursor, limit=PAGE_SIZE + 1)
    context.update(
        streams=streams[:PAGE_SIZE],
        next_cursor=streams[PAGE_SIZE - 1]["key"] if len(streams) > PAGE_SIZE else None,
        cursor=cursor,
        done=request.query_params.get("done"),
    )
    return render(request, "worker.html", context)


@router.post("/ui/workers/{worker_id}/drain")
async def drain(request: Request, worker_id: str) -> Response:
    _guard(request)
    form = await _form(request)
    if (refused := _check_csrf(request, form)) is not None:
        return refused
    wid = views.parse_uuid(worker_id)
    if wid is None:
        raise errors.NotFound("worker", worker_id)
    await _orch(request).drain(wid)
    return RedirectResponse(f"/ui/workers/{wid}?done=drain", status_code=303)


# -- streams -------------------------------------------------------------------
@router.get("/ui/streams")
async def streams(request: Request) -> Response:
    _guard(request)
    search = _text(request, "q")
    state = request.query_params.get("state") or None
    state = state if state in _STATES else None
    cursor = _text(request, "cursor") or ""
    rows = await _orch(request).streams(
        after=cursor, limit=PAGE_SIZE + 1, state=state, worker=None, search=search
    )
    exact = None
    if search and _KEY.match(search) and not cursor:
        exact = await _orch(request).find_stream(search)
    return render(
        request,
        "streams.html",
        {
            "page": "streams",
            "rows": rows[:PAGE_SIZE],
            "next": urlencode(
                {"q": search or "", "state": state or "", "cursor": rows[PAGE_SIZE - 1]["key"]}
            )
            if len(rows) > PAGE_SIZE
            else None,
            "q": search or "",
            "state": state or "",
            "states": _STATES,
            "cursor": cursor,
            "exact": exact,
        },
    )


def _key(value: str | None) -> str:
    if not value or not _KEY.match(value):
        raise errors.InvalidInput(
            f"stream key {(value or '')[:80]!r} is invalid: use 1-200 letters, digits or ._:-/"
        )
    return value


@router.get("/ui/stream")
async def stream(request: Request) -> Response:
    _guard(request)
    key = _key(request.query_params.get("key"))
    row = await _orch(request).find_stream(key)
    if row is None:
        raise errors.NotFound("stream", key)
    events = await _store(request).recent_events(limit=LIVE_EVENTS, stream=key)
    context = {
        "page": "streams",
        "s": row,
        "events": events,
        "confirm": request.query_params.get("confirm") == "delete",
        "done": request.query_params.get("done"),
    }
    template = "_stream.html" if _fragment(request) else "stream.html"
    return render(request, template, context)


@router.get("/ui/explain")
async def explain(request: Request) -> Response:
    """A stream's explanation, fetched after its page: it plans the whole fleet."""
    _guard(request)
    key = _key(request.query_params.get("key"))
    return render(request, "_explain.html", {"text": await _orch(request).explain(key)})


@router.post("/ui/stream")
async def stream_action(request: Request) -> Response:
    _guard(request)
    form = await _form(request)
    if (refused := _check_csrf(request, form)) is not None:
        return refused
    key = _key(form.get("key"))
    action = form.get("action")
    orch = _orch(request)
    if action == "delete":
        await orch.delete_stream(key)
        return RedirectResponse("/ui/streams?" + urlencode({"deleted": key}), status_code=303)
    if action not in ("enable", "disable"):
        raise errors.InvalidInput(f"unknown action {action!r}: use enable, disable or delete")
    row = await orch.find_stream(key)
    if row is None:
        raise errors.NotFound("stream", key)
    spec = StreamSpec(
        key, row["url"], row["weight"], row["labels"], row["requires"], action == "enable"
    )
    await orch.put_stream(spec)
    return RedirectResponse(
        "/ui/stream?" + urlencode({"key": key, "done": action}), status_code=303
    )


# -- events --------------------------------------------------------------------
@router.get("/ui/events")
async def events(request: Request) -> Response:
    _guard(request)
    kind = _text(request, "kind", 64)
    stream_key = _text(request, "stream")
    worker_text = _text(request, "worker")
    worker_id = views.parse_uuid(worker_text)
    unknown_worker = False
    if worker_text and worker_id is None:
        found = await _orch(request).original_instance(worker_text)
        worker_id = found["id"] if found else None
        unknown_worker = found is None
    try:
        before = int(request.query_params["before"]) if request.query_params.get("before") else None
    except ValueError:
        before = None
    rows = (
        []
        if unknown_worker
        else await _store(request).recent_events(
            limit=LIVE_EVENTS, before=before, kind=kind, stream=stream_key, worker=worker_id
        )
    )
    filters = {"kind": kind or "", "stream": stream_key or "", "worker": worker_text or ""}
    context = {
        "page": "events",
        "events": rows,
        "filters": filters,
        "kinds": views.EVENT_KINDS,
        "before": before,
        "unknown_worker": unknown_worker,
        "live_query": urlencode(filters),
        "older": urlencode({**filters, "before": rows[-1]["id"]})
        if len(rows) == LIVE_EVENTS
        else None,
    }
    template = "_events.html" if _fragment(request) else "events.html"
    return render(request, template, context)


@router.get("/ui/{rest:path}")
async def not_found(request: Request, rest: str) -> Response:
    return render(
        request,
        "error.html",
        {"title": "No such page", "message": f"There is no dashboard page /ui/{rest}."},
        status_code=404,
    )
