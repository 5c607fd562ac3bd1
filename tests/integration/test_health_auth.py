"""/health/detailed and /metrics follow the admin rule unless DIAGNOSTICS_PUBLIC; /health and
/ready need no token."""

from __future__ import annotations

import pytest

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
