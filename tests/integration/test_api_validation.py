"""I8: every invalid request gets a 4xx with a message saying what and how to fix; no write."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.anyio

GOOD = {"url": "http://radio.example/stream.mp3"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "fragment"),
    [
        ("PUT", "/v1/streams/bad key", GOOD, 422, "invalid_key", "letters, digits"),
        ("PUT", "/v1/streams/" + "k" * 201, GOOD, 422, "invalid_key", "1-200"),
        ("PUT", "/v1/streams/ok", {}, 422, "invalid_input", "url: Field required"),
        ("PUT", "/v1/streams/ok", {**GOOD, "weight": 0}, 422, "invalid_input", "weight"),
        ("PUT", "/v1/streams/ok", {**GOOD, "weight": "heavy"}, 422, "invalid_input", "weight"),
        (
            "PUT",
            "/v1/streams/ok",
            {**GOOD, "labels": {"bad key!": "x"}},
            422,
            "invalid_input",
            "label key",
        ),
        (
            "PUT",
            "/v1/streams/ok",
            {**GOOD, "labels": {"k": "v" * 300}},
            422,
            "invalid_input",
            "longer than 255",
        ),
        (
            "PUT",
            "/v1/streams/ok",
            {**GOOD, "labels": {f"k{i}": "v" for i in range(40)}},
            422,
            "invalid_input",
            "at most 32 labels",
        ),
        (
            "PUT",
            "/v1/streams/ok",
            {**GOOD, "requires": {"region": 5}},
            422,
            "invalid_input",
            "requires",
        ),
        ("PUT", "/v1/streams/ok", {**GOOD, "colour": "red"}, 422, "invalid_input", "colour"),
        ("PUT", "/v1/streams/ok", [1, 2], 422, "invalid_input", "request"),
        (
            "POST",
            "/v1/streams/bulk",
            {"streams": [{"key": "a", **GOOD}, {"key": "a", **GOOD}]},
            422,
            "invalid_input",
            "duplicate keys: a",
        ),
        (
            "POST",
            "/v1/streams/bulk",
            {"streams": [], "mode": "merge"},
            422,
            "invalid_input",
            "mode",
        ),
        (
            "POST",
            "/v1/streams/bulk",
            {"streams": [{"key": "x y", **GOOD}]},
            422,
            "invalid_input",
            "streams[0].key",
        ),
        ("GET", "/v1/streams?limit=0", None, 422, "invalid_input", "limit"),
        ("GET", "/v1/streams?state=lost", None, 422, "invalid_input", "state"),
        ("GET", "/v1/streams/nope", None, 404, "stream_not_found", "nope"),
        ("DELETE", "/v1/streams/nope", None, 404, "stream_not_found", "nope"),
        ("POST", "/v1/workers/register", {"name": "w 1"}, 422, "invalid_input", "name"),
        (
            "POST",
            "/v1/workers/register",
            {"name": "w1", "capacity": 0},
            422,
            "invalid_input",
            "capacity",
        ),
        (
            "POST",
            "/v1/workers/not-a-uuid/heartbeat",
            {"incarnation": 1},
            422,
            "invalid_input",
            "worker_id",
        ),
        (
            "POST",
            f"/v1/workers/{uuid.uuid4()}/heartbeat",
            {"incarnation": 1},
            404,
            "worker_not_found",
            "no worker",
        ),
        (
            "POST",
            f"/v1/workers/{uuid.uuid4()}/heartbeat",
            {"running": []},
            422,
            "invalid_input",
            "incarnation",
        ),
        (
            "POST",
            f"/v1/workers/{uuid.uuid4()}/heartbeat",
            {"incarnation": 1, "status": "sleeping"},
            422,
            "invalid_input",
            "status",
        ),
        (
            "GET",
            f"/v1/workers/{uuid.uuid4()}/assignments?wait=31",
            None,
            422,
            "invalid_input",
            "wait",
        ),
        ("POST", f"/v1/workers/{uuid.uuid4()}/drain", None, 404, "worker_not_found", "no worker"),
        ("DELETE", f"/v1/workers/{uuid.uuid4()}", None, 404, "worker_not_found", "no worker"),
        ("GET", "/v1/workers?status=zombie", None, 422, "invalid_input", "status"),
        ("GET", "/v1/events?since=-1", None, 422, "invalid_input", "since"),
    ],
)
async def test_invalid_requests(api, method, path, body, status, code, fragment):
    # Worker calls carry a (here unknown) worker secret: what is checked is the input.
    response = await api.request(method, path, json=body, headers={"X-Worker-Secret": "s"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert fragment in error["message"]
    # Nothing was written by a rejected request.
    listing = await api.get("/v1/streams")
    assert listing.json()["items"] == []


async def test_malformed_json_is_a_422(api):
    response = await api.put(
        "/v1/streams/ok", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "invalid json"),
        (b"[1, 2]", "should be an object"),
        (b'{"incarnation": 1, "running": ["ok", "bad key!"]}', "running[1]"),
        (b'{"incarnation": 0}', "incarnation"),
    ],
)
async def test_heartbeat_bodies_are_validated_like_every_other(api, content, fragment):
    # The heartbeat is served outside FastAPI's request handling (the hot path), so its
    # validation is checked on its own.
    worker = (await api.post("/v1/workers/register", json={"name": "w1"})).json()
    response = await api.post(
        f"/v1/workers/{worker['worker_id']}/heartbeat",
        content=content,
        headers={"content-type": "application/json", "X-Worker-Secret": worker["secret"]},
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert fragment in error["message"].lower()


async def test_oversized_body_is_a_413(api):
    response = await api.put("/v1/streams/ok", json={"url": "x" * (2 * 2**20)})
    assert response.status_code == 413
    assert "MiB" in response.json()["error"]["message"]


async def test_bulk_is_all_or_nothing(api):
    streams = [{"key": f"s{i}", **GOOD} for i in range(10)]
    streams.append({"key": "broken", "url": ""})
    response = await api.post("/v1/streams/bulk", json={"streams": streams})
    assert response.status_code == 422
    assert "streams[10].url" in response.json()["error"]["message"]
    assert (await api.get("/v1/streams")).json()["items"] == []


async def test_deregister_with_streams_is_a_409_with_advice(api):
    worker = (await api.post("/v1/workers/register", json={"name": "w1"})).json()
    await api.put("/v1/streams/s1", json=GOOD)
    for _ in range(50):  # wait for the grant
        hb = await api.post(
            f"/v1/workers/{worker['worker_id']}/heartbeat",
            json={"incarnation": 1, "running": []},
            headers={"X-Worker-Secret": worker["secret"]},
        )
        if hb.json()["assignments"]:
            break
        import anyio

        await anyio.sleep(0.05)
    response = await api.delete(f"/v1/workers/{worker['worker_id']}")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "worker_owns_streams"
    assert "drain it first" in error["message"]
