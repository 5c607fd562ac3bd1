"""Optional bearer tokens: workers act for workers, admins do everything; /health/detailed and
/metrics follow the admin rule unless DIAGNOSTICS_PUBLIC; /health and /ready need no token."""

from __future__ import annotations

import pytest

from streamorch.server.serve import warn_if_exposed
from tests.asgi import serving

pytestmark = pytest.mark.anyio


@pytest.fixture
def engine_settings(make_settings, postgres_server, database, redis_url):
    return make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=redis_url,
        STREAMORCH_ADMIN_TOKEN="admin-secret",
        STREAMORCH_WORKER_TOKEN="worker-secret",
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_tokens_are_enforced(api):
    body = {"url": "http://x"}
    assert (await api.put("/v1/streams/a", json=body)).status_code == 401
    denied = await api.put("/v1/streams/a", json=body, headers=bearer("worker-secret"))
    assert denied.status_code == 401
    assert "admin token" in denied.json()["error"]["message"]
    assert (
        await api.put("/v1/streams/a", json=body, headers=bearer("admin-secret"))
    ).status_code == 201

    register = {"name": "w1"}
    assert (await api.post("/v1/workers/register", json=register)).status_code == 401
    wrong = await api.post("/v1/workers/register", json=register, headers=bearer("nope"))
    assert wrong.status_code == 401
    for name, token in (("w1", "worker-secret"), ("w2", "admin-secret")):
        ok = await api.post("/v1/workers/register", json={"name": name}, headers=bearer(token))
        assert ok.status_code == 201

    # Health and readiness need no token.
    assert (await api.get("/ready")).status_code == 200


def test_warning_when_exposed_without_tokens(make_settings):
    assert warn_if_exposed(make_settings(ORCHESTRATOR_HOST="0.0.0.0"))
    assert not warn_if_exposed(make_settings(ORCHESTRATOR_HOST="127.0.0.1"))
    assert not warn_if_exposed(
        make_settings(ORCHESTRATOR_HOST="0.0.0.0", STREAMORCH_ADMIN_TOKEN="t")
    )


@pytest.mark.parametrize("path", ["/metrics", "/health/detailed"])
async def test_metrics_and_diagnostics_need_the_admin_token(api, path):
    assert (await api.get(path)).status_code == 401
    worker = await api.get(path, headers={"Authorization": "Bearer worker-secret"})
    assert worker.status_code == 401
    admin = await api.get(path, headers={"Authorization": "Bearer admin-secret"})
    assert admin.status_code == 200
    assert (await api.get("/health")).status_code == 200


async def test_diagnostics_can_be_made_public_without_opening_the_rest(
    make_settings, postgres_server, database, redis_url
):
    settings = make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=redis_url,
        STREAMORCH_ADMIN_TOKEN="admin-secret",
        DIAGNOSTICS_PUBLIC="true",
    )
    async with serving(settings) as client:
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/health/detailed")).status_code == 200
        assert (await client.get("/v1/workers")).status_code == 401


async def test_each_401_says_what_was_wrong(api):
    path, body = "/v1/streams/a", {"url": "http://x"}
    cases = {
        "missing": {},
        "malformed": {"Authorization": "admin-secret"},
        "worker_token": bearer("worker-secret"),
        "wrong": bearer("nope"),
    }
    messages = set()
    for reason, headers in cases.items():
        answer = await api.put(path, json=body, headers=headers)
        assert answer.status_code == 401
        error = answer.json()["error"]
        assert (error["code"], error["details"]["reason"]) == ("unauthorized", reason)
        assert "admin token" in error["message"]
        messages.add(error["message"])
    assert len(messages) == len(cases)  # four different messages for four mistakes
