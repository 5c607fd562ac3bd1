"""Optional bearer tokens: workers act for workers, admins do everything."""

from __future__ import annotations

import pytest

from streamorch.core.serve import warn_if_exposed

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
    for token in ("worker-secret", "admin-secret"):
        ok = await api.post("/v1/workers/register", json=register, headers=bearer(token))
        assert ok.status_code == 201

    # Health and readiness need no token.
    assert (await api.get("/ready")).status_code == 200


def test_warning_when_exposed_without_tokens(make_settings):
    assert warn_if_exposed(make_settings(ORCHESTRATOR_HOST="0.0.0.0"))
    assert not warn_if_exposed(make_settings(ORCHESTRATOR_HOST="127.0.0.1"))
    assert not warn_if_exposed(
        make_settings(ORCHESTRATOR_HOST="0.0.0.0", STREAMORCH_ADMIN_TOKEN="t")
    )
