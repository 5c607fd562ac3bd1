"""The OpenAPI document describes the answers the API really gives (the conformance
fuzzing in tests/integration/test_openapi_conformance.py checks it against the server)."""

from __future__ import annotations

import json

import pytest

from streamorch.api.app import create_app
from streamorch.config import Settings


@pytest.fixture(scope="module")
def document() -> dict:
    return create_app(Settings()).openapi()


def _responses(document: dict, method: str, path: str) -> dict:
    return document["paths"][path][method]["responses"]


def test_errors_have_the_error_schema_not_fastapis_detail(document):
    text = json.dumps(document)
    assert "HTTPValidationError" not in text
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and not (
                    status == "503" and path.startswith(("/health", "/ready"))
                ):
                    schema = answer["content"]["application/json"]["schema"]
                    if (method, path, status) == ("get", "/instances/{server_id}", "404"):
                        # The original protocol's own shape, which its clients read.
                        assert schema["required"] == ["detail"]
                        continue
                    assert schema == error, (method, path, status)


@pytest.mark.parametrize(
    ("method", "path", "codes"),
    [
        ("get", "/v1/streams/{key}", {"200", "401", "404", "422", "500", "503"}),
        ("put", "/v1/streams/{key}", {"200", "201", "400", "413", "422"}),
        ("post", "/v1/workers/register", {"201", "409", "413", "422"}),
        ("post", "/v1/workers/{worker_id}/heartbeat", {"200", "403", "404", "409", "413", "422"}),
        ("get", "/instances/{server_id}", {"200", "404"}),
        ("delete", "/v1/workers/{worker_id}", {"204", "404", "409"}),
    ],
)
def test_each_operation_lists_its_status_codes(document, method, path, codes):
    assert codes <= set(_responses(document, method, path))


@pytest.mark.parametrize("path", ["/register", "/heartbeat", "/streams/assign", "/streams/release"])
def test_original_instances_are_never_answered_404_or_409(document, path):
    assert not {"404", "409"} & set(_responses(document, "post", path))


def test_metrics_are_text(document):
    assert list(_responses(document, "get", "/metrics")["200"]["content"]) == ["text/plain"]


def test_the_heartbeat_is_documented_from_the_models_it_validates_with(document):
    operation = document["paths"]["/v1/workers/{worker_id}/heartbeat"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/WorkerHeartbeat"}
    fields = document["components"]["schemas"]["WorkerHeartbeat"]["properties"]
    assert {"incarnation", "running", "version", "status", "metrics"} <= set(fields)
