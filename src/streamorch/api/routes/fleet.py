"""The fleet as operators see it: `GET /v1/workers` (paged), one worker, forgetting one.

Every list is one bounded page (`limit` ≤ 1000) with a cursor, so no answer grows with
the history of the fleet: its encoding stays a few milliseconds of the event loop,
which heartbeats share. The list shows live workers unless asked otherwise.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from streamorch.api import deps
from streamorch.api.pages import json_page
from streamorch.api.schemas import NAME_PATTERN

router = APIRouter(
    prefix="/v1/workers", tags=["workers"], dependencies=[Depends(deps.require_admin)]
)

MAX_PAGE = 1000
# `status` values: one status, or a group of them.
STATUS_GROUPS = {
    "active": ["active"],
    "draining": ["draining"],
    "expired": ["expired"],
    "left": ["left"],
    "live": ["active", "draining"],
    "departed": ["expired", "left"],
    "all": ["active", "draining", "expired", "left"],
}


def worker_out(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "worker_id": str(r["id"]),
        "name": r["name"],
        "status": r["status"],
        "incarnation": r["incarnation"],
        "capacity": r["capacity"],
        "load": r["load"],
        "labels": r["labels"],
        "address": r["address"],
        "last_heartbeat": r["last_heartbeat"].isoformat(),
        "lease_expires_at": r["lease_expires_at"].isoformat(),
        "streams": r["streams"],
        # "original": an instance of the original protocol (docs/reference/
        # compat-protocol.md), whose streams are pinned while its lease holds.
        "kind": r["kind"],
        "generation": r["generation"],
        "pinned_streams": r["pinned"] or [],
    }


@router.get("")
async def list_workers(
    orch: deps.OrchestratorDep,
    status: str | None = Query(
        None,
        pattern="^(active|draining|expired|left|live|departed|all)$",
        description="a status, or live (the default), departed or all",
    ),
    name: str | None = Query(
        None, pattern=NAME_PATTERN, description="only the worker of this name, any status"
    ),
    limit: int = Query(100, ge=1, le=MAX_PAGE),
    cursor: str | None = Query(None, pattern=NAME_PATTERN, description="next_cursor of a page"),
) -> Response:
    """One page of workers in name order: `{"items": [...], "next_cursor": str | null}`."""
    if name is not None:
        row = await orch.find_worker(name=name)
        wanted = STATUS_GROUPS[status or "all"]
        items = [worker_out(row)] if row is not None and row["status"] in wanted else []
        return JSONResponse({"items": items, "next_cursor": None})
    rows = await orch.workers(STATUS_GROUPS[status or "live"], after=cursor or "", limit=limit + 1)

    def build() -> dict[str, Any]:
        items = [worker_out(r) for r in rows[:limit]]
        return {"items": items, "next_cursor": items[-1]["name"] if len(rows) > limit else None}

    return await json_page(build)


@router.get("/{worker_id}")
async def get_worker(worker_id: uuid.UUID, orch: deps.OrchestratorDep) -> JSONResponse:
    """One worker by id, whatever its status."""
    return JSONResponse(worker_out(await orch.worker(worker_id=worker_id)))


@router.post("/{worker_id}/forget", status_code=204)
async def forget(worker_id: uuid.UUID, orch: deps.OrchestratorDep) -> Response:
    """Delete a departed (left or expired) worker now; its events keep its name.

    409 `worker_not_departed` while it is live: drain and remove it first.
    """
    await orch.forget(worker_id)
    return Response(status_code=204)
