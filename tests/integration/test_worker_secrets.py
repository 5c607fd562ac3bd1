"""Per-worker credentials (docs/decisions/0014-per-worker-credentials.md): the fleet's
worker token lets a worker join; acting for a worker takes that worker's own secret."""

from __future__ import annotations

import hashlib

import psycopg
import pytest

from tests.asgi import serving
from tests.conftest import FAST_ENGINE
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": "Bearer admin-token"}
FLEET = {"Authorization": "Bearer worker-token"}


@pytest.fixture
def engine_settings(make_settings, postgres_server, database, redis_url):
    return make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=redis_url,
        STREAMORCH_ADMIN_TOKEN="admin-token",
        STREAMORCH_WORKER_TOKEN="worker-token",
        **FAST_ENGINE,
    )


async def register(api, name: str, headers=FLEET, **params) -> dict:
    response = await api.post(
        "/v1/workers/register", json={"name": name}, headers=headers, params=params
    )
    assert response.status_code == 201, response.text
    return response.json()


def as_worker(worker: dict, secret: str | None = None) -> dict[str, str]:
    return {**FLEET, "X-Worker-Secret": secret or worker["secret"]}


async def beat(api, worker: dict, headers: dict[str, str]):
    return await api.post(
        f"/v1/workers/{worker['worker_id']}/heartbeat",
        json={"incarnation": worker["incarnation"], "running": []},
        headers=headers,
    )


def code(response) -> str:
    return response.json()["error"]["code"]


async def test_only_the_worker_itself_renews_its_lease(api):
    one, two = await register(api, "one"), await register(api, "two")
    assert one["secret"] != two["secret"]
    assert (await beat(api, one, as_worker(one))).status_code == 200

    missing = await beat(api, one, FLEET)
    assert (missing.status_code, code(missing)) == (403, "worker_secret_required")
    stolen = await beat(api, one, as_worker(one, two["secret"]))
    assert (stolen.status_code, code(stolen)) == (403, "invalid_worker_secret")
    # Not even the admin renews a worker's lease.
    admin = await beat(api, one, {**ADMIN, "X-Worker-Secret": "guess"})
    assert admin.status_code == 403
    # The refused beats changed nothing: the worker's own still works.
    assert (await beat(api, one, as_worker(one))).status_code == 200


async def test_a_worker_cannot_drain_remove_or_read_another(api):
    one, two = await register(api, "one"), await register(api, "two")
    path = f"/v1/workers/{one['worker_id']}"
    for method, suffix in (("GET", "/assignments"), ("POST", "/drain"), ("DELETE", "")):
        for headers in (FLEET, as_worker(one, two["secret"])):
            response = await api.request(method, path + suffix, headers=headers)
            assert response.status_code == 403, (method, suffix, response.text)
    assert (await api.get(path + "/assignments", headers=as_worker(one))).status_code == 200
    # The fleet token cannot list the fleet; the admin's list shows no secrets.
    assert (await api.get("/v1/workers", headers=FLEET)).status_code == 401
    listing = await api.get("/v1/workers", headers=ADMIN)
    assert listing.status_code == 200
    assert one["secret"] not in listing.text
    assert two["secret"] not in listing.text
    assert all("secret" not in item for item in listing.json()["items"])
    # The admin token overrides the secret for operator calls.
    assert (await api.post(path + "/drain", headers=ADMIN)).status_code == 202
    assert (await api.delete(path, headers=ADMIN)).status_code == 204
    # And the worker itself may leave.
    own = f"/v1/workers/{two['worker_id']}"
    assert (await api.post(own + "/drain", headers=as_worker(two))).status_code == 202
    assert (await api.delete(own, headers=as_worker(two))).status_code == 204


async def test_a_live_name_is_taken_over_only_by_its_holder_or_an_admin(api):
    first = await register(api, "w1")
    taken = await api.post("/v1/workers/register", json={"name": "w1"}, headers=FLEET)
    assert (taken.status_code, code(taken)) == (409, "name_in_use")
    assert taken.json()["error"]["details"]["retry_after_s"] >= 1
    wrong = await api.post(
        "/v1/workers/register", json={"name": "w1"}, headers=as_worker(first, "not-it")
    )
    assert wrong.status_code == 409
    forced = await api.post(
        "/v1/workers/register", json={"name": "w1"}, headers=FLEET, params={"force": "true"}
    )
    assert forced.status_code == 403
    # The holder was not disturbed by any of that.
    assert (await beat(api, first, as_worker(first))).status_code == 200

    # The holder proves itself with its secret (a restart of the same worker).
    second = await api.post("/v1/workers/register", json={"name": "w1"}, headers=as_worker(first))
    assert second.status_code == 201, second.text
    second = second.json()
    assert second["incarnation"] == first["incarnation"] + 1
    assert second["secret"] != first["secret"]
    old = await beat(api, first, as_worker(first))
    assert (old.status_code, code(old)) == (409, "superseded")
    assert (await beat(api, second, as_worker(second))).status_code == 200

    # An admin may force it.
    third = await register(api, "w1", headers=ADMIN, force="true")
    assert third["incarnation"] == second["incarnation"] + 1
    assert (await beat(api, second, as_worker(second))).status_code == 409


async def test_a_name_whose_lease_ended_is_free(api):
    await register(api, "gone")

    async def free() -> bool:
        response = await api.post("/v1/workers/register", json={"name": "gone"}, headers=FLEET)
        return response.status_code == 201

    await wait_until(free, timeout=15, what="the name is free once the lease ended")


async def test_only_a_digest_of_the_secret_is_stored(api, engine_settings):
    worker = await register(api, "w1")
    conninfo = engine_settings.database_url.get_secret_value()
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute("SELECT secret_hash, workers::text FROM workers")
        stored, row_text = await cur.fetchone()
    assert bytes(stored) == hashlib.sha256(worker["secret"].encode()).digest()
    assert worker["secret"] not in row_text


async def test_without_tokens_the_secret_is_still_needed_to_heartbeat(
    make_settings, postgres_server, database, redis_url
):
    settings = make_settings(DATABASE_URL=postgres_server.url(database), REDIS_URL=redis_url)
    async with serving(settings) as api:
        worker = await register(api, "w1", headers={})
        assert (await beat(api, worker, {})).status_code == 403
        assert (await beat(api, worker, {"X-Worker-Secret": worker["secret"]})).status_code == 200
        taken = await api.post("/v1/workers/register", json={"name": "w1"})
        assert taken.status_code == 409
