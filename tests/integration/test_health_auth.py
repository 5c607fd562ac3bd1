"""/health/detailed and /metrics follow the admin rule; /health and /ready need no token."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def engine_settings(make_settings, postgres_server, database, redis_url):
    return make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=redis_url,
        STREAMORCH_ADMIN_TOKEN="admin-secret",
        STREAMORCH_WORKER_TOKEN="worker-secret",
    )


@pytest.mark.parametrize("path", ["/metrics", "/health/detailed"])
async def test_metrics_and_diagnostics_need_the_admin_token(api, path):
    assert (await api.get(path)).status_code == 401
    worker = await api.get(path, headers={"Authorization": "Bearer worker-secret"})
    assert worker.status_code == 401
    admin = await api.get(path, headers={"Authorization": "Bearer admin-secret"})
    assert admin.status_code == 200
    assert (await api.get("/health")).status_code == 200
