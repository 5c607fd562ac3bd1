"""Every list is one bounded page: workers (live by default, by status, by name, with a
cursor), events (oldest or newest first), and forgetting a departed worker. The real
app in process on real PostgreSQL."""

from __future__ import annotations

import pytest

from streamorch.client.admin import AdminClient
from streamorch.client.errors import APIError

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api(make_settings, postgres_server, database, redis_url):
    """The app with leases long enough that no worker here expires (none heartbeats)."""
    from tests.asgi import serving

    settings = make_settings(
        DATABASE_URL=postgres_server.url(database), REDIS_URL=redis_url, LEASE_TTL="600"
    )
    async with serving(settings) as client:
        yield client


async def register(api, name: str) -> str:
    response = await api.post("/v1/workers/register", json={"name": name, "capacity": 3})
    assert response.status_code == 201, response.text
    return response.json()["worker_id"]


async def leave(api, worker_id: str) -> None:
    assert (await api.delete(f"/v1/workers/{worker_id}")).status_code == 204


async def page(api, **params) -> dict:
    response = await api.get("/v1/workers", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_workers_page_by_cursor_live_by_default(api):
    ids = {f"w{i:02d}": await register(api, f"w{i:02d}") for i in range(25)}
    for name in ("w03", "w11", "w20"):
        await leave(api, ids[name])

    seen, cursor, pages = [], None, 0
    while True:
        body = await page(api, limit=10, **({"cursor": cursor} if cursor else {}))
        seen += [w["name"] for w in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(set(ids) - {"w03", "w11", "w20"})
    assert pages == 3
    assert all(w["status"] == "active" for w in (await page(api))["items"])

    departed = await page(api, status="departed")
    assert [w["name"] for w in departed["items"]] == ["w03", "w11", "w20"]
    assert len((await page(api, status="all", limit=1000))["items"]) == 25
    assert [w["name"] for w in (await page(api, status="left"))["items"]] == ["w03", "w11", "w20"]

    # One worker by name, whatever its status; nothing when the status does not match.
    assert (await page(api, name="w11"))["items"][0]["status"] == "left"
    assert (await page(api, name="w11", status="live"))["items"] == []
    assert (await page(api, name="nobody"))["items"] == []
    one = await api.get(f"/v1/workers/{ids['w11']}")
    assert one.status_code == 200
    assert one.json()["name"] == "w11"

    counts = (await api.get("/v1/status")).json()["workers"]
    assert counts == {"active": 22, "draining": 0, "expired": 0, "left": 3}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/workers?limit=1001",
        "/v1/workers?limit=0",
        "/v1/workers?status=gone",
        "/v1/workers?name=bad%20name",
        "/v1/events?limit=1001",
        "/v1/events?newest=sideways",
        "/v1/events?before=0",
        "/v1/streams?limit=1001",
    ],
)
async def test_pages_are_capped_and_bad_parameters_are_named(api, path):
    response = await api.get(path)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    name = path.split("?")[1].split("=")[0]
    assert name in error["message"]


async def test_events_newest_first_by_pages(api):
    for i in range(7):
        await register(api, f"e{i}")
    oldest = (await api.get("/v1/events", params={"limit": 1000})).json()["items"]
    assert len(oldest) == 7

    seen, before = [], None
    while True:
        params = {"limit": 3, **({"before": before} if before else {"newest": "true"})}
        body = (await api.get("/v1/events", params=params)).json()
        seen += body["items"]
        before = body["next_before"]
        if before is None:
            break
    assert [e["id"] for e in seen] == [e["id"] for e in reversed(oldest)]
    assert seen[0]["worker"] == "e6"


async def test_forget_a_departed_worker_through_the_api_and_the_sdk(api):
    live = await register(api, "keeper")
    gone = await register(api, "goner")
    await leave(api, gone)

    refused = await api.post(f"/v1/workers/{live}/forget")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "worker_not_departed"
    assert "drain" in refused.json()["error"]["message"]
    missing = await api.post("/v1/workers/00000000-0000-4000-8000-000000000000/forget")
    assert missing.status_code == 404

    async with AdminClient("http://orchestrator", client=api) as admin:
        found = await admin.get_worker("goner")
        assert found["status"] == "left"
        assert (await admin.get_worker(gone))["name"] == "goner"  # by id too
        await admin.forget_worker(found["worker_id"])
        with pytest.raises(APIError) as unknown:
            await admin.get_worker("goner")
        assert unknown.value.status == 404
        assert [w["name"] for w in await admin.list_workers("all")] == ["keeper"]
        events = (await admin.events(newest=True, limit=10))["items"]
    forgotten = [e for e in events if e["kind"] == "worker_forgotten"]
    assert forgotten[0]["worker"] == "goner"
    assert forgotten[0]["reason"] == "requested"
