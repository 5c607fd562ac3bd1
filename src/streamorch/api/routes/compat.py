"""The original orchestrator's instance protocols, served beside API v1.

Protocol 1 (root paths: /register, /heartbeat, /streams/assign, /streams/release,
/instances, /streams/assignments, /status) and protocol 2 (/api/workers/register,
/api/heartbeat, GET /api/streams/assign, /api/streams/update, /api/workers). Their
clients accept only HTTP 200 and compare literal status strings, so every answer
they read is 200 with exactly those strings (docs/reference/compat-protocol.md).
Unknown body fields are accepted and ignored; the named ones are validated like
the rest of the API. The mapping onto the engine is in core/compat.py.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from streamorch.api import deps
from streamorch.api.pages import json_answer
from streamorch.api.schemas import MAX_RUNNING, _check_labels, _check_metrics
from streamorch.core.compat import Compat
from streamorch.domain.errors import StoreUnavailable

router = APIRouter(tags=["compat"], dependencies=[Depends(deps.require_worker)])

MAX_ID = 10**18 - 1  # ids are stream keys of at most 18 digits
StreamId = Annotated[int, Field(ge=0, le=MAX_ID)]
# Looser than a v1 worker name: instances in the field use whatever their SERVER_ID was
# (underscores, …); only whitespace and "/" (GET /instances/{server_id}) are refused.
SERVER_ID_PATTERN = r"^[^\s/\x00]{1,200}$"
ServerId = Annotated[str, StringConstraints(pattern=SERVER_ID_PATTERN)]
Count = Annotated[int, Field(ge=-1_000_000, le=1_000_000)]


class Lenient(BaseModel):
    # The clients send more than the protocol names (system_metrics, metadata, metrics…).
    model_config = ConfigDict(extra="ignore")


class RegisterBody(Lenient):
    server_id: ServerId
    ip: str = Field(min_length=1, max_length=255, pattern=r"^[^\s/\x00]+$")
    port: int = Field(ge=0, le=65535)
    max_streams: int = Field(20, ge=1, le=1_000_000)
    labels: dict[str, str] = Field(default_factory=dict)

    _labels = field_validator("labels")(_check_labels)


class HeartbeatBody(Lenient):
    server_id: ServerId
    current_streams: Count  # a count: the clients never send ids
    status: str = Field("active", max_length=64, pattern=r"^[^\x00]*$")
    system_metrics: dict[str, Any] | None = None

    @field_validator("system_metrics")
    @classmethod
    def _storable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _check_metrics(value)


class AssignBody(Lenient):
    server_id: ServerId
    requested_count: Count = 20


class ReleaseBody(Lenient):
    server_id: ServerId
    stream_ids: list[StreamId] = Field(max_length=MAX_RUNNING)


class WorkerRegisterBody(Lenient):
    instance_id: ServerId
    worker_type: str = Field("fingerv7", max_length=64)
    capacity: int = Field(1, ge=1, le=1_000_000)
    ip: str | None = Field(None, max_length=255, pattern=r"^[^\s/]+$")
    port: int | None = Field(None, ge=0, le=65535)
    status: str = Field("active", max_length=64)


class WorkerHeartbeatBody(Lenient):
    worker_instance_id: ServerId
    status: str = Field("active", max_length=64)
    current_load: Count = 0
    available_capacity: Count = 0
    capacity: int | None = Field(None, ge=1, le=1_000_000)


class StreamUpdateBody(Lenient):
    stream_id: int | str
    worker_instance_id: ServerId
    status: str = Field(min_length=1, max_length=64)


def _compat(request: Request, orch: deps.OrchestratorDep) -> Compat:
    # One per application: it remembers for a moment that no stream is waiting.
    extras = deps.get_runtime(request).extras
    compat: Compat | None = extras.get("compat")
    if compat is None or compat.orch is not orch:
        compat = extras["compat"] = Compat(orch)
    return compat


CompatDep = Annotated[Compat, Depends(_compat)]


def _metrics(**values: Any) -> dict[str, Any]:
    return {"protocol": "original", **{k: v for k, v in values.items() if v is not None}}


# -- protocol 1 (C1, C2; C3's release) ------------------------------------------------------


@router.post("/register")
async def register(compat: CompatDep, body: RegisterBody) -> dict[str, Any]:
    known = await compat.instance(body.server_id)
    await compat.register(
        body.server_id,
        capacity=body.max_streams,
        ip=body.ip,
        port=body.port,
        labels=body.labels,
        generation="C1/C2",
        metrics=_metrics(current_streams=0, status="active"),
    )
    return {
        "status": "registered",
        "server_id": body.server_id,
        "max_streams": body.max_streams,
        "reregistration": known is not None,
        "auto_rebalanced": False,
    }


@router.post("/heartbeat")
async def heartbeat(compat: CompatDep, body: HeartbeatBody) -> dict[str, Any]:
    # C1 sends system metrics with every heartbeat, C2 never does.
    await compat.heartbeat(
        body.server_id,
        metrics=_metrics(
            current_streams=max(body.current_streams, 0),
            status=body.status,
            system_metrics=body.system_metrics,
        ),
        generation="C1" if body.system_metrics is not None else "C2",
        capacity=None,
    )
    return {"status": "heartbeat_updated"}


@router.post("/streams/assign")
async def assign(compat: CompatDep, body: AssignBody) -> dict[str, Any]:
    status, ids, message = await compat.pull(body.server_id, body.requested_count)
    if status == "assigned":
        return {"status": status, "assigned_streams": ids, "count": len(ids)}
    return {"status": status, "assigned_streams": [], "message": message}


@router.post("/streams/release")
async def release(compat: CompatDep, body: ReleaseBody) -> dict[str, Any]:
    if not body.stream_ids:
        return {"status": "no_streams_to_release"}
    released = await compat.release(body.server_id, body.stream_ids)
    return {"status": "released", "released_streams": released, "count": len(released)}


# The unpaged views below answer the whole fleet, or every assigned stream, at once (the
# original clients know no pages): shaped (core/compat.py) and encoded off the event loop.


@router.get("/instances", response_model=dict[str, Any])
async def instances(compat: CompatDep) -> Response:
    found = await compat.instances()
    return await json_answer(lambda: {"instances": found})


@router.get("/instances/{server_id}")
async def instance(compat: CompatDep, server_id: str) -> JSONResponse:
    found = await compat.instances(server_id)
    if not found:
        return JSONResponse(
            {"detail": f"instance {server_id} not found: it registers with POST /register"},
            status_code=404,
        )
    return await json_answer(lambda: {"status": "success", "data": found[0]})


@router.get("/streams/assignments", response_model=dict[str, Any])
async def assignments(compat: CompatDep) -> Response:
    found = await compat.assignments()
    return await json_answer(lambda: {"assignments": found})


@router.get("/status")
async def status(orch: deps.OrchestratorDep) -> dict[str, Any]:
    try:
        view = await orch.status()
    except StoreUnavailable as exc:
        # As the original: still 200, saying what is wrong.
        return {"orchestrator_status": "error", "error": f"PostgreSQL is unavailable: {exc}"}
    streams, workers = view["streams"], view["workers"]
    return {
        "orchestrator_status": "active",
        "instances": {
            "total": sum(workers.values()),
            "active": workers["active"] + workers["draining"],
            "total_capacity": view["capacity"],
            "current_load": view["load"],
        },
        "streams": {
            "assigned": streams["assigned"] + streams["moving"],
            "available": streams["unassigned"],
            "total": streams["enabled"],
        },
        "load_percentage": view["load_percent"],
    }


# -- protocol 2 (C3) ------------------------------------------------------------------------


@router.post("/api/workers/register")
async def worker_register(compat: CompatDep, body: WorkerRegisterBody) -> dict[str, Any]:
    await compat.register(
        body.instance_id,
        capacity=body.capacity,
        ip=body.ip,
        port=body.port,
        labels={},
        generation="C3",
        metrics=_metrics(current_streams=0, status=body.status, worker_type=body.worker_type),
    )
    return {
        "success": True,
        "worker_id": body.instance_id,
        "message": f"worker {body.instance_id} registered",
    }


@router.post("/api/heartbeat")
async def worker_heartbeat(compat: CompatDep, body: WorkerHeartbeatBody) -> dict[str, Any]:
    load = max(body.current_load, 0)
    await compat.heartbeat(
        body.worker_instance_id,
        metrics=_metrics(
            current_streams=load,
            status=body.status,
            available_capacity=body.available_capacity,
        ),
        generation="C3",
        capacity=body.capacity or (load + body.available_capacity) or 1,
    )
    return {"success": True, "message": "Heartbeat received"}


@router.get("/api/streams/assign")
async def worker_assign(
    compat: CompatDep,
    worker_id: Annotated[str, Query(pattern=SERVER_ID_PATTERN)],
    capacity: Annotated[int, Query(ge=-1_000_000, le=1_000_000)] = 1,
    worker_type: Annotated[str, Query(max_length=64)] = "fingerv7",
) -> dict[str, Any]:
    status, ids, message = await compat.pull(worker_id, capacity)
    if status != "assigned":
        return {
            "status": status,
            "assigned_streams": [],
            "message": message,
            "worker_id": worker_id,
        }
    urls = await compat.urls(ids)
    streams: list[dict[str, Any]] = [
        {
            "stream_id": str(i),
            "id": i,
            "stream_url": urls.get(str(i)),
            "url": urls.get(str(i)),
            "name": str(i),
            "metadata": {},
        }
        for i in ids
    ]
    return {
        "status": "assigned",
        "assigned_streams": ids,
        "streams": streams,
        "total": len(ids),
        "worker_id": worker_id,
    }


@router.post("/api/streams/update")
async def stream_update(body: StreamUpdateBody) -> dict[str, Any]:
    # Progress reports only: the original never freed a stream here, and neither do we
    # (a stream leaves an instance by its release or the end of its lease).
    return {"success": True, "message": f"stream {body.stream_id} status {body.status} noted"}


@router.get("/api/workers", response_model=dict[str, Any])
async def workers(compat: CompatDep) -> Response:
    found = await compat.instances()

    def build() -> dict[str, Any]:
        items = [
            {
                "instance_id": i["server_id"],
                "worker_type": i["kind"] if i["kind"] == "sdk" else "fingerv7",
                "status": i["status"],
                "capacity": i["max_streams"],
                "current_load": i["current_streams"],
                "available_capacity": max(i["max_streams"] - i["current_streams"], 0),
                "last_heartbeat": i["last_heartbeat"],
                "registered_at": i["registered_at"],
                "kind": i["kind"],
                "generation": i["generation"],
            }
            for i in found
        ]
        return {"workers": items, "total": len(items)}

    return await json_answer(build)
