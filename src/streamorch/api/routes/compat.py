"""The original instance protocol (API.md § Compatibility), served beside API v1.

Integer stream ids, `server_id` as the worker name; the mapping onto the engine is
in core/compat.py. Unknown body fields are ignored (instances in the field may send
more than the protocol names); the named ones are validated like the rest of the API.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from streamorch.api import deps
from streamorch.api.schemas import MAX_RUNNING, NAME_PATTERN, _check_labels
from streamorch.core.compat import Compat
from streamorch.core.service import Orchestrator

router = APIRouter(tags=["compat"], dependencies=[Depends(deps.require_worker)])

MAX_ID = 10**18 - 1  # ids are stream keys of at most 18 digits
StreamId = Annotated[int, Field(ge=0, le=MAX_ID, strict=True)]
ServerId = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RegisterBody(Lenient):
    server_id: ServerId
    ip: str = Field(min_length=1, max_length=255, pattern=r"^[^\s/\x00]+$")
    port: int = Field(ge=1, le=65535)
    max_streams: int = Field(ge=1, le=1_000_000)
    labels: dict[str, str] = Field(default_factory=dict)

    _labels = field_validator("labels")(_check_labels)


class HeartbeatBody(Lenient):
    server_id: ServerId
    current_streams: list[StreamId] = Field(default_factory=list, max_length=MAX_RUNNING)
    status: str = Field("active", min_length=1, max_length=32, pattern=r"^[^\x00]+$")


class AssignBody(Lenient):
    server_id: ServerId
    requested_count: int = Field(ge=0, le=MAX_RUNNING)


class ReleaseBody(Lenient):
    server_id: ServerId
    stream_ids: list[StreamId] = Field(max_length=MAX_RUNNING)


def _compat(orch: Orchestrator = Depends(deps.orchestrator)) -> Compat:
    return Compat(orch)


def _timing(request: Request) -> dict[str, float]:
    settings = request.app.state.runtime.settings
    return {"heartbeat_interval_s": settings.heartbeat_interval, "lease_ttl_s": settings.lease_ttl}


@router.post("/register", status_code=201)
async def register(
    request: Request, body: RegisterBody, compat: Compat = Depends(_compat)
) -> JSONResponse:
    row = await compat.register(body.server_id, body.ip, body.port, body.max_streams, body.labels)
    return JSONResponse(
        {
            "status": "registered",
            "server_id": body.server_id,
            "worker_id": str(row["id"]),
            "incarnation": row["incarnation"],
            "max_streams": body.max_streams,
            **_timing(request),
        },
        status_code=201,
    )


@router.post("/heartbeat")
async def heartbeat(
    request: Request, body: HeartbeatBody, compat: Compat = Depends(_compat)
) -> dict[str, Any]:
    answer, result = await compat.heartbeat(body.server_id, body.current_streams, body.status)
    return {
        "status": "ok",
        "server_id": body.server_id,
        **answer,
        "lease_expires_at": result.lease_expires_at.isoformat(),
        **_timing(request),
    }


@router.post("/streams/assign")
async def assign(body: AssignBody, compat: Compat = Depends(_compat)) -> dict[str, Any]:
    ids, status = await compat.assign(body.server_id, body.requested_count)
    return {
        "status": "ok" if status == "active" else status,
        "assigned_streams": ids,
        "count": len(ids),
    }


@router.post("/streams/release")
async def release(body: ReleaseBody, compat: Compat = Depends(_compat)) -> dict[str, Any]:
    released, not_owned = await compat.release(body.server_id, body.stream_ids)
    return {
        "status": "ok",
        "released_streams": released,
        "not_owned": not_owned,
        "count": len(released),
    }


@router.get("/status")
async def status(orch: Orchestrator = Depends(deps.orchestrator)) -> dict[str, Any]:
    view = await orch.status()
    streams, workers = view["streams"], view["workers"]
    return {
        "status": "ok",
        "instances": {
            "total": workers["active"] + workers["draining"],
            "active": workers["active"],
            "draining": workers["draining"],
        },
        "streams": {
            "total": streams["enabled"],
            "assigned": streams["assigned"],
            "unassigned": streams["unassigned"],
            "moving": streams["moving"],
        },
        "capacity": view["capacity"],
        "load": view["load"],
        "load_percent": view["load_percent"],
    }


@router.get("/instances")
async def instances(compat: Compat = Depends(_compat)) -> dict[str, Any]:
    items = await compat.instances()
    return {"instances": items, "count": len(items)}


@router.get("/streams/assignments")
async def assignments(compat: Compat = Depends(_compat)) -> dict[str, Any]:
    return await compat.owners()
