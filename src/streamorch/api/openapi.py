"""The OpenAPI document at /openapi.json, made to tell the truth about every answer.

FastAPI documents the success answer of each route and a 422 in its own `detail`
shape. The API answers more than that, and every error in one shape
(`{"error": {"code", "message", "details"}}`, api/errors.py). The document is
therefore completed here from the rules the routes follow, in one place:

- every error answer has the error schema;
- a call with a body can answer 413 (too large) and 422, and 400 when FastAPI cannot
  read the body at all; a call with parameters can answer 422;
- a call behind a token can answer 401, a call for one worker (or registering) 403;
  every call can answer 500, and every call that reads PostgreSQL 503;
- the calls on one worker or stream answer 404 when there is none; 409 where a state
  conflict is possible (the `CONFLICTS` table);
- the heartbeat, served by a plain Starlette endpoint for speed, is documented from the
  very models that endpoint validates and answers with.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode
from starlette.routing import Route

from streamorch.api.schemas import DesiredOut, ErrorBody, HeartbeatBody

REF = "#/components/schemas/{model}"
ERROR = {"$ref": REF.format(model="ErrorBody")}

DESCRIPTIONS = {
    400: "The body could not be read at all (for example nested too deeply).",
    401: "A token is configured and the request has none, a malformed or a wrong one "
    "(details.reason says which).",
    403: "The worker's secret is missing or wrong, or force=true came without the admin token.",
    404: "No such worker, stream or instance.",
    409: "The call conflicts with the current state (see the error's code).",
    413: "The body is larger than the limit (1 MiB; 64 MiB for bulk calls).",
    422: "The input is invalid; the message names each field and the fix.",
    500: "An unexpected error; the server logged it with the request id.",
    503: "PostgreSQL is unavailable; retry after Retry-After seconds.",
}

WORKER = "/v1/workers/{worker_id}"
HEARTBEAT = WORKER + "/heartbeat"

# Conflicts (409) each call can answer, by (method, path).
CONFLICTS = {
    ("post", "/v1/workers/register"): "name_in_use",
    ("post", HEARTBEAT): "superseded, lease_expired",
    ("post", WORKER + "/drain"): "worker_not_live",
    ("delete", WORKER): "worker_owns_streams",
}
# The original protocol's one 404 (an unknown instance), in the original's own shape: its
# clients read `detail` (docs/reference/compat-protocol.md). Its other calls never answer
# 404 or 409 to an instance.
ORIGINAL_NOT_FOUND = ("get", "/instances/{server_id}")
DETAIL = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
# Bodies read by pydantic itself, not FastAPI: an unreadable body is a 422, never a 400.
PYDANTIC_BODIES = {("post", HEARTBEAT)}
# Calls that need no token, and calls that never touch PostgreSQL.
PUBLIC = {"/health", "/ready"}
# Calls that answer 503 with their own body (what is unhealthy), not the error schema.
HEALTH_BODIES = {"/health", "/ready", "/health/detailed"}
NO_DATABASE = {"/health", "/ready", "/health/detailed", "/metrics", "/openapi.json"}


def install(app: FastAPI, heartbeat_route: Route) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            _add_heartbeat(schema, heartbeat_route.path)
            complete(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_heartbeat(schema: dict[str, Any], path: str) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    models: tuple[tuple[type[BaseModel], JsonSchemaMode, str], ...] = (
        (HeartbeatBody, "validation", "WorkerHeartbeat"),
        (DesiredOut, "serialization", "DesiredOut"),
    )
    for model, mode, name in models:
        generated = model.model_json_schema(ref_template=REF, mode=mode)
        components.update(generated.pop("$defs", {}))
        components[name] = generated
    schema["paths"][path] = {
        "post": {
            "tags": ["workers"],
            "summary": "Heartbeat",
            "description": "Renew the lease, report the running set, get the desired set. "
            "Needs the worker's secret in X-Worker-Secret.",
            "operationId": "heartbeat_v1_workers__worker_id__heartbeat_post",
            "parameters": [
                {
                    "name": "worker_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid", "title": "Worker Id"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": REF.format(model="WorkerHeartbeat")}}
                },
            },
            "responses": {
                "200": {
                    "description": "The desired set",
                    "content": {
                        "application/json": {"schema": {"$ref": REF.format(model="DesiredOut")}}
                    },
                }
            },
        }
    }


def complete(schema: dict[str, Any]) -> None:
    """Add every error answer each operation can give, in the error schema."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema(ref_template=REF)
    components.update(components["ErrorBody"].pop("$defs", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            _complete_operation(path, method, operation)


def _complete_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    codes: set[int] = {500}
    if operation.get("requestBody"):
        codes |= {413, 422}
        if (method, path) not in PYDANTIC_BODIES:
            codes.add(400)
    if operation.get("parameters"):
        codes.add(422)
    if path not in PUBLIC:
        codes.add(401)
    if "{worker_id}" in path or path == "/v1/workers/register":
        codes.add(403)  # the worker's secret; force=true without the admin token
    if path not in NO_DATABASE:
        codes.add(503)
    names_one = "{worker_id}" in path or "{key}" in path
    if names_one and method != "put":
        codes.add(404)
    if (method, path) in CONFLICTS:
        codes.add(409)
    for code in sorted(codes):
        description = DESCRIPTIONS[code]
        if code == 409:
            description += f" Codes: {CONFLICTS[(method, path)]}."
        responses[str(code)] = {
            "description": description,
            "content": {"application/json": {"schema": ERROR}},
        }
    if (method, path) == ORIGINAL_NOT_FOUND:
        responses["404"] = {
            "description": "No such instance.",
            "content": {"application/json": {"schema": DETAIL}},
        }
    if path in HEALTH_BODIES:
        # Health and readiness answer 503 with their own body, not an error.
        ok = responses.get("200", {})
        responses["503"] = {
            "description": "Not healthy (or not ready): the body says which part and why.",
            "content": copy.deepcopy(ok.get("content", {"application/json": {"schema": {}}})),
        }
    if path == "/metrics":
        responses["200"] = {
            "description": "The Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    if (method, path) == ("put", "/v1/streams/{key}"):
        created = copy.deepcopy(responses.get("200", {}))
        created["description"] = "Created"
        responses["201"] = created
        responses.setdefault("200", {})["description"] = "Updated"
