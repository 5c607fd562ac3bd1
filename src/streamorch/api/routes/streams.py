"""The stream catalog: `/v1/streams`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse
from starlette.convertors import Convertor, register_url_convertor

from streamorch.api import deps
from streamorch.api.pages import json_page
from streamorch.api.schemas import (
    CURSOR_PATTERN,
    NAME_PATTERN,
    BulkBody,
    StreamBody,
    key_problem,
)
from streamorch.domain.errors import InvalidInput
from streamorch.domain.records import StreamSpec

router = APIRouter(
    prefix="/v1/streams", tags=["streams"], dependencies=[Depends(deps.require_admin)]
)


class _AnyPath(Convertor[str]):
    """Starlette's `path` without its blind spot: `.` does not match a newline, so a key
    holding one matched no route (404) instead of being refused as a key (422)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPath())


def valid_key(key: str) -> str:
    problem = key_problem(key)
    if problem:
        raise InvalidInput(problem, code="invalid_key")
    return key


def stream_out(row: dict[str, Any]) -> dict[str, Any]:
    assignment = None
    if row.get("worker_id") is not None:
        assignment = {
            "worker": row["worker_name"],
            "worker_id": str(row["worker_id"]),
            "token": row["token"],
            "state": row["state"],
            "since": row["since"].isoformat(),
            "reason": row["reason"],
            "target": row.get("target_name"),
        }
    out = {
        "key": row["key"],
        "url": row["url"],
        "weight": row["weight"],
        "labels": row["labels"],
        "requires": row["requires"],
        "enabled": row["enabled"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "assignment": assignment,
    }
    if "reason" in row and assignment is None and row.get("reason"):
        out["reason"] = row["reason"]
    return out


@router.post("/bulk")
async def bulk(body: BulkBody, orch: deps.OrchestratorDep) -> dict[str, int]:
    specs = [
        StreamSpec(s.key, s.url, s.weight, s.labels, s.requires, s.enabled) for s in body.streams
    ]
    return await orch.bulk(specs, body.mode)


@router.get("")
async def list_streams(
    orch: deps.OrchestratorDep,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, pattern=CURSOR_PATTERN),
    state: str | None = Query(None, pattern="^(assigned|unassigned|moving)$"),
    worker: str | None = Query(None, pattern=NAME_PATTERN),
) -> Response:
    rows = await orch.streams(after=cursor or "", limit=limit + 1, state=state, worker=worker)

    def build() -> dict[str, Any]:
        items = [stream_out(r) for r in rows[:limit]]
        return {"items": items, "next_cursor": items[-1]["key"] if len(rows) > limit else None}

    # Not through FastAPI's generic encoder (several times slower), and off the loop.
    return await json_page(build)


@router.get("/{key:anypath}/explain")
async def explain(key: str, orch: deps.OrchestratorDep) -> dict[str, Any]:
    row = await orch.get_stream(valid_key(key))
    return {
        "key": key,
        "explanation": await orch.explain(key),
        "assignment": stream_out(row)["assignment"],
    }


@router.put("/{key:anypath}")
async def put_stream(key: str, body: StreamBody, orch: deps.OrchestratorDep) -> JSONResponse:
    spec = StreamSpec(
        valid_key(key), body.url, body.weight, body.labels, body.requires, body.enabled
    )
    created, row = await orch.put_stream(spec)
    return JSONResponse(stream_out(row), status_code=201 if created else 200)


@router.get("/{key:anypath}")
async def get_stream(key: str, orch: deps.OrchestratorDep) -> dict[str, Any]:
    return stream_out(await orch.get_stream(valid_key(key)))


@router.delete("/{key:anypath}", status_code=204)
async def delete_stream(key: str, orch: deps.OrchestratorDep) -> Response:
    await orch.delete_stream(valid_key(key))
    return Response(status_code=204)
