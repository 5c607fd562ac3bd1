"""Cluster views: `/v1/status` and `/v1/events`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from streamorch.api import deps
from streamorch.api.pages import json_page
from streamorch.api.schemas import INT64_MAX, KEY_PATTERN

# The largest page of any list; answers stay small enough to encode in milliseconds.
MAX_PAGE = 1000

router = APIRouter(prefix="/v1", tags=["cluster"], dependencies=[Depends(deps.require_admin)])


@router.get("/status")
async def status(orch: deps.OrchestratorDep) -> dict[str, Any]:
    return await orch.status()


@router.get("/events")
async def events(
    orch: deps.OrchestratorDep,
    since: int = Query(0, ge=0, le=INT64_MAX, description="only events after this id"),
    limit: int = Query(100, ge=1, le=MAX_PAGE),
    stream: str | None = Query(None, pattern=KEY_PATTERN),
    newest: bool = Query(False, description="the newest `limit` events, newest first"),
    before: int | None = Query(None, ge=1, le=INT64_MAX, description="newest first, below this id"),
) -> Response:
    """One page of the event log.

    Oldest first: follow with `since=next_since`. Newest first (`newest` or `before`):
    page back with `before=next_before` (null on the last page); `next_since` is still
    the newest id, for following. Events older than EVENT_RETENTION are gone
    (core/retention.py).
    """
    newest = newest or before is not None
    rows = await orch.events(since=since, limit=limit, stream=stream, newest=newest, before=before)

    def build() -> dict[str, Any]:
        items = [
            {
                "id": r["id"],
                "at": r["at"].isoformat(),
                "kind": r["kind"],
                "stream": r["stream_key"],
                "worker_id": str(r["worker_id"]) if r["worker_id"] else None,
                "worker": r["worker_name"],
                "worker_kind": r.get("worker_kind"),  # "original": an original-protocol instance
                "worker_generation": r.get("worker_generation"),
                "reason": r["reason"],
                "details": r["details"],
            }
            for r in rows
        ]
        body: dict[str, Any] = {
            "items": items,
            "next_since": max((i["id"] for i in items), default=since),
        }
        if newest:
            body["next_before"] = items[-1]["id"] if len(items) == limit else None
        return body

    return await json_page(build)
