"""The fleet: `/v1/workers` — register, heartbeat, long-poll, drain, deregister.

The admin views (list, one worker, forget) are in `fleet.py`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.routing import Route

from streamorch.api import deps
from streamorch.api.schemas import INT64_MAX, DesiredOut, HeartbeatBody, RegisterBody
from streamorch.config import Settings
from streamorch.core.service import Orchestrator
from streamorch.domain import credentials
from streamorch.domain.errors import Forbidden

router = APIRouter(prefix="/v1/workers", tags=["workers"])


def _settings(request: Request) -> Settings:
    return deps.get_settings(request)


def desired_response(request: Request, row: dict[str, Any]) -> Response:
    """A desired set (heartbeat and long-poll answers), `row["assignments"]` being JSON text.

    The hot path of the API: the assignments arrive from PostgreSQL as JSON text and
    are spliced in as they are, instead of being parsed and encoded again.
    """
    settings = _settings(request)
    head = {
        "lease_expires_at": row["lease_expires_at"].isoformat(),
        "version": row["version"],
        # Which registration this set is for: a long-poll has no incarnation to check,
        # so a superseded incarnation must be able to tell the set is not its own.
        "incarnation": row["incarnation"],
        "status": row["status"],
        "heartbeat_interval_s": settings.heartbeat_interval,
        "lease_ttl_s": settings.lease_ttl,
    }
    body = f'{json.dumps(head)[:-1]},"assignments":{row["assignments"]}}}'
    return Response(body, media_type="application/json")


@router.post("/register", status_code=201, dependencies=[Depends(deps.require_worker)])
async def register(
    orch: deps.OrchestratorDep,
    request: Request,
    body: RegisterBody,
    force: bool = Query(
        False,
        description="take the name over from its live holder (admin token only)",
    ),
) -> JSONResponse:
    """Start a new incarnation of the worker `name`; the answer's `secret` authenticates
    its calls. A live holder of the name is fenced only by a call that sends the
    holder's secret in `X-Worker-Secret` (a restart of the same worker) or by an admin
    with `force=true`; otherwise 409 `name_in_use`."""
    if force and not deps.is_admin(request):
        raise Forbidden("force=true needs the admin token", code="forbidden")
    row = await orch.register(
        name=body.name,
        capacity=body.capacity,
        labels=body.labels,
        address=body.address,
        proof=deps.worker_secret(request),
        supersede=force,
    )
    settings = _settings(request)
    return JSONResponse(
        {
            "worker_id": str(row["id"]),
            "name": body.name,
            "incarnation": row["incarnation"],
            "secret": row["secret"],
            "heartbeat_interval_s": settings.heartbeat_interval,
            "lease_ttl_s": settings.lease_ttl,
            "lease_expires_at": row["lease_expires_at"].isoformat(),
            "kept_streams": row["kept"],
        },
        status_code=201,
    )


async def fast_heartbeat(request: Request) -> Response:
    """Renew the lease, report the running set, get the desired set.

    A plain Starlette endpoint: the same checks and errors, without FastAPI's
    per-request machinery (the scan of every route, dependency resolution), which was a
    third of a heartbeat's CPU (docs/decisions/0005-heartbeat-hot-path.md). Its OpenAPI
    entry is generated from `HeartbeatBody` and `DesiredOut` (api/openapi.py)."""
    request.scope["route"] = heartbeat_route  # FastAPI's router sets it only for its own routes
    await deps.require_worker(request)
    raw_id = request.path_params["worker_id"]
    try:
        worker_id = uuid.UUID(raw_id)
    except ValueError:
        raise RequestValidationError(
            [{"loc": ("path", "worker_id"), "msg": "Input should be a valid UUID", "type": "uuid"}]
        ) from None
    if deps.worker_secret(request) is None:
        raise credentials.refused(worker_id, given=False)
    try:
        body = HeartbeatBody.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    return await _heartbeat(request, worker_id, body)


heartbeat_route = Route(
    f"{router.prefix}/{{worker_id}}/heartbeat", fast_heartbeat, methods=["POST"]
)


async def _heartbeat(request: Request, worker_id: uuid.UUID, body: HeartbeatBody) -> Response:
    orch: Orchestrator = request.app.state.runtime.orchestrator
    result = await orch.heartbeat(
        worker_id,
        incarnation=body.incarnation,
        running=body.running,
        draining=body.status == "draining",
        metrics=body.metrics,
        acked_version=body.version,
        secret=deps.worker_secret(request) or "",
    )
    return desired_response(
        request,
        {
            "lease_expires_at": result.lease_expires_at,
            "version": result.version,
            "incarnation": body.incarnation,
            "status": result.status,
            "assignments": result.assignments_json,
        },
    )


@router.get(
    "/{worker_id}/assignments",
    dependencies=[Depends(deps.require_worker_secret)],
    response_model=DesiredOut,
)
async def assignments(
    orch: deps.OrchestratorDep,
    request: Request,
    worker_id: uuid.UUID,
    version: int | None = Query(None, ge=0, le=INT64_MAX),
    wait: float = Query(0, ge=0, le=30),
) -> Response:
    return desired_response(request, await orch.desired(worker_id, version=version, wait=wait))


@router.post(
    "/{worker_id}/drain", status_code=202, dependencies=[Depends(deps.require_worker_secret)]
)
async def drain(worker_id: uuid.UUID, orch: deps.OrchestratorDep) -> dict[str, str]:
    await orch.drain(worker_id)
    return {"status": "draining"}


@router.delete("/{worker_id}", status_code=204, dependencies=[Depends(deps.require_worker_secret)])
async def deregister(
    worker_id: uuid.UUID, orch: deps.OrchestratorDep, force: bool = False
) -> Response:
    await orch.deregister(worker_id, force=force)
    return Response(status_code=204)
