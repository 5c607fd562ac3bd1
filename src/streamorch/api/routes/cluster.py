"""Cluster views: `/v1/status` and `/v1/events`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from streamorch.api import deps
from streamorch.api.schemas import INT64_MAX, KEY_PATTERN
from streamorch.core.service import Orchestrator

router = APIRouter(prefix="/v1", tags=["cluster"], dependencies=[Depends(deps.require_admin)])


@router.get("/status")
async def status(orch: Orchestrator = Depends(deps.orchestrator)) -> dict[str, Any]:
    return await orch.status()


@router.get("/events")
async def events(
    since: int = Query(0, ge=0, le=INT64_MAX),
    limit: int = Query(100, ge=1, le=1000),
    stream: str | None = Query(None, pattern=KEY_PATTERN),
    newest: bool = Query(False, description="The newest `limit` events, newest first."),
    orch: Orchestrator = Depends(deps.orchestrator),
) -> dict[str, Any]:
    rows = await orch.events(since=since, limit=limit, stream=stream, newest=newest)
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
    return {"items": items, "next_since": max((i["id"] for i in items), default=since)}
