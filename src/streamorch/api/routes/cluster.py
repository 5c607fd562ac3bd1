"""Cluster views: `/v1/status` and `/v1/events`."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from streamorch.api import deps
from streamorch.api.pages import json_page
from streamorch.core.service import Orchestrator

# The largest page of any list; answers stay small enough to encode in milliseconds.
MAX_PAGE = 1000
_NO_BOUND = 2**63 - 1

router = APIRouter(prefix="/v1", tags=["cluster"], dependencies=[Depends(deps.require_admin)])


@router.get("/status")
async def status(orch: Orchestrator = Depends(deps.orchestrator)) -> dict[str, Any]:
    return await orch.status()


@router.get("/events")
async def events(
    since: int = Query(0, ge=0, description="oldest first, after this id"),
    before: int | None = Query(None, ge=1, description="newest first, before this id"),
    order: Literal["oldest", "newest"] = Query(
        "oldest", description="newest: the latest events first (implied by `before`)"
    ),
    limit: int = Query(100, ge=1, le=MAX_PAGE),
    stream: str | None = Query(None, max_length=200),
    orch: Orchestrator = Depends(deps.orchestrator),
) -> Response:
    """One page of the event log.

    Oldest first: `{"items", "next_since"}`, follow with `since=next_since`. Newest
    first (`order=newest` or `before`): `{"items", "next_before"}`, null on the last page.
    Events older than EVENT_RETENTION are gone (core/retention.py).
    """
    newest = order == "newest" or before is not None
    rows = await orch.events(
        since=since,
        limit=limit,
        stream=stream,
        before=(before or _NO_BOUND) if newest else None,
    )

    def build() -> dict[str, Any]:
        items = [
            {
                "id": r["id"],
                "at": r["at"].isoformat(),
                "kind": r["kind"],
                "stream": r["stream_key"],
                "worker_id": str(r["worker_id"]) if r["worker_id"] else None,
                "worker": r["worker_name"],
                "reason": r["reason"],
                "details": r["details"],
            }
            for r in rows
        ]
        if newest:
            return {"items": items, "next_before": items[-1]["id"] if len(items) == limit else None}
        return {"items": items, "next_since": items[-1]["id"] if items else since}

    return await json_page(build)
