"""I8 against a careless or hostile client: what PostgreSQL cannot store is a 422 naming
the field (never a 500), and one worker's bad heartbeat never touches another's."""

from __future__ import annotations

import logging
import uuid

import anyio
import psycopg
import pytest

from streamorch.backing import endpoints
from streamorch.core import engine
from streamorch.domain.errors import UnstorableValue
from streamorch.domain.models import Policy
from streamorch.domain.records import StreamSpec
from streamorch.store.database import DatabaseManager
from streamorch.store.postgres import EngineStore
from tests.asgi import serving

pytestmark = pytest.mark.anyio

GOOD = {"url": "http://radio.example/stream.mp3"}
NUL = "a\x00b"


async def register(api, name: str, **body) -> dict:
    response = await api.post("/v1/workers/register", json={"name": name, **body})
    assert response.status_code == 201, response.text
    return response.json()


def secret_of(worker: dict) -> dict[str, str]:
    return {"X-Worker-Secret": worker["secret"]}


async def assert_422(response, fragment: str, code: str = "invalid_input") -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert fragment in error["message"], error["message"]


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1/streams/s1", {"url": f"http://{NUL}"}, "url"),
        ("/v1/streams/s1", {**GOOD, "labels": {"k": NUL}}, "labels"),
        ("/v1/streams/s1", {**GOOD, "requires": {"k": NUL}}, "requires"),
        ("/v1/streams/s1", {**GOOD, "labels": {NUL: "v"}}, "label key"),
    ],
)
async def test_nul_in_a_stream_is_a_422_naming_the_field(api, path, body, fragment):
    await assert_422(await api.put(path, json=body), fragment)
    await assert_422(
        await api.post("/v1/streams/bulk", json={"streams": [{"key": "s1", **body}]}),
        "streams[0]",
    )
    assert (await api.get("/v1/streams")).json()["items"] == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "w1", "address": NUL}, "address"),
        ({"name": "w1", "labels": {"zone": NUL}}, "labels"),
        ({"name": NUL}, "name"),
    ],
)
async def test_nul_in_a_registration_is_a_422(api, body, fragment):
    await assert_422(await api.post("/v1/workers/register", json=body), fragment)


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/v1/streams?cursor=%00", "cursor"),
        ("/v1/streams?worker=%00", "worker"),
        ("/v1/events?stream=%00", "stream"),
        (f"/v1/events?since={2**63}", "since"),
        (f"/v1/workers/{uuid.uuid4()}/assignments?version={2**63}", "version"),
    ],
)
async def test_unstorable_query_parameters_are_a_422(api, path, fragment):
    await assert_422(await api.get(path), fragment)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"incarnation": 1, "metrics": {"cpu": NaN}}', "metrics"),
        (b'{"incarnation": 1, "metrics": {"cpu": Infinity}}', "metrics"),
        (b'{"incarnation": 1, "metrics": {"cpu": -Infinity}}', "metrics"),
        (b'{"incarnation": 1, "metrics": {"cpu": 1e400}}', "metrics"),
        (b'{"incarnation": 1, "metrics": {"deep": {"x": [1, NaN]}}}', "deep.x[1]"),
        (b'{"incarnation": 1, "metrics": {"cpu": 9223372036854775808}}', "64-bit"),
        (b'{"incarnation": 1, "metrics": {"a\\u0000b": 1}}', "NUL"),
        (b'{"incarnation": 1, "metrics": {"host": "a\\u0000b"}}', "NUL"),
        (b'{"incarnation": 9223372036854775808}', "incarnation"),
        (b'{"incarnation": 1, "version": 9223372036854775808}', "version"),
    ],
)
async def test_unstorable_heartbeats_are_a_422(api, content, fragment):
    worker = await register(api, "w1")
    response = await api.post(
        f"/v1/workers/{worker['worker_id']}/heartbeat",
        content=content,
        headers={"content-type": "application/json", **secret_of(worker)},
    )
    await assert_422(response, fragment)


async def test_poisoned_heartbeats_never_fail_well_formed_ones(settings):
    # Default timings (a 10 s lease): registering the fleet on a loaded machine must not
    # outlast the first workers' leases.
    async with serving(settings) as api:
        await _poisoned_beside_well_formed(api)


async def _poisoned_beside_well_formed(api) -> None:
    workers = [await register(api, f"w{i}") for i in range(12)]
    poison = [
        b'{"incarnation": 1, "metrics": {"cpu": NaN}}',
        b'{"incarnation": 1, "metrics": {"cpu": 1e400}}',
        b'{"incarnation": 9223372036854775808}',
        b'{"incarnation": 1, "metrics": {"x": "\\u0000"}}',
    ]
    outcomes: list[tuple[bool, int]] = []

    async def beat(worker: dict, content: bytes, poisoned: bool) -> None:
        response = await api.post(
            f"/v1/workers/{worker['worker_id']}/heartbeat",
            content=content,
            headers={"content-type": "application/json", **secret_of(worker)},
        )
        outcomes.append((poisoned, response.status_code))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            for i, worker in enumerate(workers):
                if i % 3 == 0:
                    tg.start_soon(beat, worker, poison[i % len(poison)], True)
                tg.start_soon(beat, worker, b'{"incarnation": 1, "metrics": {"cpu": 0.5}}', False)
    good = [status for poisoned, status in outcomes if not poisoned]
    bad = [status for poisoned, status in outcomes if poisoned]
    assert good == [200] * 60
    assert bad == [422] * 20


@pytest.fixture
async def store(settings):
    async with DatabaseManager(endpoints.postgres_target(settings), settings) as db:
        yield EngineStore(db)


async def test_a_beat_the_database_refuses_fails_only_its_sender(store):
    # Below the API's validation: should a beat ever reach the statement and make it
    # fail, the batch is split until the failing beat is alone.
    rows = [
        (await store.register(name=f"w{i}", capacity=2, labels={}, address=None, ttl=60))[0]
        for i in range(30)
    ]
    await store.bulk([StreamSpec(f"s{i}", f"http://x/{i}") for i in range(40)], "upsert")
    await engine.reconcile_pass(store, Policy(), None, lease_ttl=60)
    poisoned = {rows[i]["id"] for i in (3, 11, 12, 29)}
    answers: dict[uuid.UUID, object] = {}

    async def beat(row: dict) -> None:
        bad = row["id"] in poisoned
        try:
            answers[row["id"]] = await store.heartbeat(
                row["id"],
                incarnation=2**63 if bad else row["incarnation"],
                running=[],
                draining=False,
                metrics={"text": "\x00"} if bad else {"n": 1},
                ttl=60,
            )
        except Exception as exc:
            answers[row["id"]] = exc

    batches_before = store.heartbeats.batches
    async with anyio.create_task_group() as tg:
        for row in rows:
            tg.start_soon(beat, row)
    for row in rows:
        answer = answers[row["id"]]
        if row["id"] in poisoned:
            assert isinstance(answer, UnstorableValue), answer
            assert isinstance(answer.__cause__, psycopg.DataError)
        else:
            assert not isinstance(answer, Exception), answer
            assert len(answer.assignments) >= 1
    # The well-formed beats shared statements: the poison was in a batch with others.
    assert store.heartbeats.batches - batches_before < len(rows) - len(poisoned)


async def test_a_newline_in_a_key_is_an_invalid_key_not_a_missing_route(api):
    for method in ("GET", "PUT", "DELETE"):
        response = await api.request(method, "/v1/streams/a%0Ab", json=GOOD)
        await assert_422(response, "invalid", code="invalid_key")
    await assert_422(await api.get("/v1/streams/abc%0A"), "invalid", code="invalid_key")


async def test_a_key_ending_in_explain_is_refused_so_every_key_reads_back(api):
    await assert_422(await api.put("/v1/streams/a/explain", json=GOOD), "explain", "invalid_key")
    await assert_422(
        await api.post("/v1/streams/bulk", json={"streams": [{"key": "b/explain", **GOOD}]}),
        "explain",
    )
    # Keys that merely contain the word still work, and read back.
    assert (await api.put("/v1/streams/explain/a", json=GOOD)).status_code == 201
    assert (await api.get("/v1/streams/explain/a")).json()["key"] == "explain/a"
    assert (await api.get("/v1/streams/explain/a/explain")).status_code == 200


async def test_a_chunked_body_over_the_limit_is_a_413(api):
    async def chunks():
        for _ in range(3):
            yield b"x" * 2**19
        yield b"y" * 2**20

    response = await api.put(
        "/v1/streams/ok", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"
    assert "content-length" not in response.request.headers  # it really was chunked


async def test_a_client_mistake_is_logged_once_without_a_stack_trace(api, caplog):
    caplog.set_level(logging.INFO, logger="streamorch")
    await assert_422(await api.put("/v1/streams/s1", json={"url": NUL}), "url")
    records = [r for r in caplog.records if r.name.startswith("streamorch.api")]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].exc_info is None
    assert "\n" not in records[0].getMessage()


async def test_an_unexpected_error_is_a_json_500_logged_with_one_traceback(api, caplog):
    async def broken(*args, **kwargs):
        raise RuntimeError("boom")

    api.app.state.runtime.orchestrator.status = broken
    caplog.set_level(logging.INFO)
    response = await api.get("/v1/status")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal"
    assert response.headers["x-request-id"]
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1
    assert "boom" in str(tracebacks[0].exc_info[1])
