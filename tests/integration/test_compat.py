"""The original instance protocol end to end: real app, PostgreSQL and Redis, and
instances that behave like the original ones (register, heartbeat with
`current_streams`, pull with `/streams/assign`, give back with `/streams/release`).

What the instances run is journaled (tests/simulated.Journal), so overlaps are seen
from the instances' side, as in the engine tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import pytest

from tests.asgi import serving
from tests.conftest import FAST_ENGINE
from tests.simulated import Journal, Record, all_events, ownership_violations, wait_until

pytestmark = pytest.mark.anyio


class Instance:
    """An original instance: a heartbeat loop that reports what it runs and pulls for free slots.

    It stops what a heartbeat answer lists in `streams_to_stop`, and stops everything and
    registers again on 404/409. `pull=False` keeps it heartbeating without asking for more.
    """

    def __init__(self, api, name: str, max_streams: int, journal: Journal) -> None:
        self.api = api
        self.name = name
        self.max_streams = max_streams
        self.journal = journal
        self.running: set[int] = set()
        self.pull = True
        self.status = "active"
        self.incarnation = 0
        self.interval = 0.3
        self.conflicts: list[str] = []  # 404/409 answers: the instance had lost its lease
        self._task: asyncio.Task | None = None

    async def register(self) -> dict[str, Any]:
        response = await self.api.post(
            "/register",
            json={
                "server_id": self.name,
                "ip": "10.0.0.7",
                "port": 8080,
                "max_streams": self.max_streams,
            },
        )
        assert response.status_code == 201, response.text
        body = response.json()
        self.incarnation = body["incarnation"]
        self.interval = body["heartbeat_interval_s"]
        return body

    def _record(self, kind: str, stream: int, why: str) -> None:
        self.journal.add(
            Record(Journal.mark(), self.name, self.incarnation, kind, str(stream), 0, why)
        )

    def start_streams(self, ids: list[int], why: str = "assign") -> None:
        for i in ids:
            assert i not in self.running, f"{self.name} was handed {i} it already runs"
            self.running.add(i)
            self._record("start", i, why)

    def stop_streams(self, ids, why: str) -> None:
        for i in sorted(set(ids) & self.running):
            self.running.discard(i)
            self._record("stop", i, why)

    async def heartbeat(self):
        return await self.api.post(
            "/heartbeat",
            json={
                "server_id": self.name,
                "current_streams": sorted(self.running),
                "status": self.status,
            },
        )

    async def assign(self, n: int) -> list[int]:
        response = await self.api.post(
            "/streams/assign", json={"server_id": self.name, "requested_count": n}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == len(body["assigned_streams"]) <= n
        return body["assigned_streams"]

    async def release(self, ids: list[int]) -> dict[str, Any]:
        self.stop_streams(ids, "release")  # the original instances stop, then say so
        response = await self.api.post(
            "/streams/release", json={"server_id": self.name, "stream_ids": ids}
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def tick(self) -> None:
        response = await self.heartbeat()
        if response.status_code in (404, 409):
            self.conflicts.append(response.json()["error"]["code"])
            self.stop_streams(list(self.running), "conflict")
            await self.register()
            return
        assert response.status_code == 200, response.text
        self.stop_streams(response.json()["streams_to_stop"], "heartbeat")
        free = self.max_streams - len(self.running)
        if self.pull and free > 0:
            self.start_streams(await self.assign(free))

    async def run(self) -> None:
        await self.register()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.interval)

    async def crash(self) -> None:
        """The process dies: its streams stop now, the server hears nothing more."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.stop_streams(list(self.running), "crash")


async def add_streams(api, ids) -> None:
    streams = [{"key": str(i), "url": f"http://radio.example/{i}.mp3"} for i in ids]
    response = await api.post("/v1/streams/bulk", json={"streams": streams})
    assert response.status_code == 200, response.text


def runs_each_once(instances: list[Instance], ids) -> bool:
    seen = [i for inst in instances for i in inst.running]
    return sorted(seen) == sorted(ids)


async def owners(api) -> dict[str, Any]:
    response = await api.get("/streams/assignments")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def api(make_settings, postgres_server, database, redis_url):
    """The app with fast timings but a lease long enough that a loaded machine does not
    expire instances that are alive: the original protocol has no self-fencing, so an
    expired instance that still runs its streams would show as an overlap."""

    settings = make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=redis_url,
        **{**FAST_ENGINE, "LEASE_TTL": "4"},
    )
    async with serving(settings) as client:
        yield client


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
async def fleet(api, journal):
    made: list[Instance] = []

    def make(name: str, max_streams: int) -> Instance:
        inst = Instance(api, name, max_streams, journal)
        made.append(inst)
        return inst

    yield make
    for inst in made:
        await inst.crash()


async def test_instances_share_streams_once_and_fail_over(api, fleet, journal):
    ids = list(range(1, 31))
    await add_streams(api, ids)
    a, b, c = fleet("inst-a", 15), fleet("inst-b", 15), fleet("inst-c", 15)
    for inst in (a, b, c):
        await inst.run()

    async def converged() -> bool:
        """10 each, and the server's view (owners, reported sets) is what the instances run."""
        if not (runs_each_once([a, b, c], ids) and all(len(i.running) == 10 for i in (a, b, c))):
            return False
        view = await owners(api)
        listed = {i["server_id"]: i for i in (await api.get("/instances")).json()["instances"]}
        return view["moving"] == [] and all(
            {int(k) for k, name in view["assignments"].items() if name == i.name} == i.running
            and set(listed[i.name]["current_streams"]) == i.running
            for i in (a, b, c)
        )

    await wait_until(converged, timeout=60, what="30 streams, 10 per instance, seen by the server")
    listed = {i["server_id"]: i for i in (await api.get("/instances")).json()["instances"]}
    assert listed["inst-a"]["protocol"] == "compat"
    assert (listed["inst-a"]["ip"], listed["inst-a"]["port"]) == ("10.0.0.7", 8080)

    # inst-a dies: after its lease, b and c (15 slots each) run everything.
    lost = set(a.running)
    await a.crash()
    await wait_until(
        lambda: runs_each_once([b, c], ids), timeout=60, what="failover to inst-b and inst-c"
    )
    assert lost <= b.running | c.running
    listed = {i["server_id"]: i for i in (await api.get("/instances")).json()["instances"]}
    assert listed["inst-a"]["status"] == "expired"
    status = (await api.get("/status")).json()
    assert status["instances"]["active"] == 2
    assert status["streams"] == {"total": 30, "assigned": 30, "unassigned": 0, "moving": 0}

    assert [i.conflicts for i in (a, b, c)] == [[], [], []]
    assert journal.overlaps() == []
    assert ownership_violations(await all_events(api)) == []


async def test_release_hands_streams_to_another_instance(api, fleet, journal):
    ids = [1, 2, 3, 4]
    await add_streams(api, ids)
    a, b = fleet("inst-a", 4), fleet("inst-b", 4)
    await a.run()
    await wait_until(lambda: a.running == set(ids), timeout=30, what="inst-a runs all")
    await b.run()
    await wait_until(
        lambda: runs_each_once([a, b], ids) and len(b.running) == 2,
        timeout=30,
        what="rebalanced 2/2",
    )

    a.pull = False
    given_back = sorted(a.running)
    mark = Journal.mark()
    answer = await a.release([*given_back, 999])
    assert answer["released_streams"] == given_back
    assert answer["not_owned"] == [999]

    def started_on_b() -> set[int]:
        return {int(r.stream) for r in journal.starts_on("inst-b", mark)}

    # Each goes to inst-b (the release chose it); rebalancing may later want some of
    # them back on inst-a, which does not pull any more, so only the starts are checked.
    await wait_until(lambda: set(given_back) <= started_on_b(), timeout=30, what="inst-b took them")
    assert [r for r in journal.since(mark, "start") if r.worker != "inst-b"] == []
    assert [a.conflicts, b.conflicts] == [[], []]
    assert journal.overlaps() == []
    events = await all_events(api)
    assert {e["stream"] for e in events if e["reason"] == "released"} == {
        str(i) for i in given_back
    }
    assert ownership_violations(events) == []


async def test_a_draining_instance_hands_its_streams_over(api, fleet, journal):
    ids = [1, 2, 3, 4]
    await add_streams(api, ids)
    a, b = fleet("inst-a", 4), fleet("inst-b", 4)
    await a.run()
    await b.run()
    await wait_until(lambda: runs_each_once([a, b], ids), timeout=30, what="placed")

    a.status = "shutting_down"  # one of the original instances' words for it
    await wait_until(
        lambda: b.running == set(ids) and not a.running, timeout=30, what="drained to inst-b"
    )
    answer = await api.post("/streams/assign", json={"server_id": "inst-a", "requested_count": 4})
    assert answer.json() == {"status": "draining", "assigned_streams": [], "count": 0}
    listed = {i["server_id"]: i for i in (await api.get("/instances")).json()["instances"]}
    assert listed["inst-a"]["status"] == "draining"
    assert journal.overlaps() == []


async def test_assign_hands_out_each_stream_once(api, fleet):
    await add_streams(api, [5, 6, 7])
    response = await api.put("/v1/streams/radio-x", json={"url": "http://radio.example/x"})
    assert response.status_code == 201
    inst = fleet("inst-a", 10)
    await inst.register()

    first = await inst.assign(2)
    assert len(first) == 2
    rest = await inst.assign(10)
    assert sorted(first + rest) == [5, 6, 7]  # radio-x has no integer id to hand out
    assert await inst.assign(10) == []
    assert await inst.assign(0) == []


async def test_a_handed_out_stream_counts_as_running_until_reported(api, fleet):
    orch = api.app.state.runtime.orchestrator
    await add_streams(api, [1])
    inst = fleet("inst-a", 5)
    await inst.register()
    assert await inst.assign(1) == [1]

    async def passes(n: int) -> None:
        target = orch.reconciler.stats.passes + n
        await wait_until(lambda: orch.reconciler.stats.passes >= target, what=f"{n} passes")

    # The stream is deleted before the instance started it; its report without the
    # stream may predate the hand-out, so it must not end the instance's ownership.
    assert (await api.delete("/v1/streams/1")).status_code == 204
    assert (await inst.heartbeat()).status_code == 200
    await passes(3)
    assert (await owners(api))["moving"] == [1]

    # Reported running, then reported without it: now it has stopped.
    inst.start_streams([1])
    answer = (await inst.heartbeat()).json()
    assert answer["streams_to_stop"] == [1]
    inst.stop_streams([1], "heartbeat")
    assert (await inst.heartbeat()).status_code == 200
    await wait_until(lambda: _no_owner(api), what="move finished")


async def test_a_hand_out_is_running_before_the_next_report(api, fleet, postgres_server, database):
    """A pass that began before the instance's last report revokes what it then pulled:
    that report (without the stream) must not count as the stream's stop."""
    orch = api.app.state.runtime.orchestrator
    await add_streams(api, [1])
    inst = fleet("inst-a", 5)
    await inst.register()
    assert (await inst.heartbeat()).status_code == 200
    assert await inst.assign(1) == [1]
    # Async: a blocking connection waiting for a row lock of the app's reconciler would
    # stall the event loop that reconciler needs to finish.
    conn = await psycopg.AsyncConnection.connect(
        postgres_server.conninfo(database), autocommit=True
    )
    async with conn:
        await conn.execute(
            "UPDATE assignments SET state = 'revoking', reason = 'rebalance', "
            "revoked_at = now() - interval '1 hour' WHERE stream_key = '1'"
        )
        await conn.execute("UPDATE cluster SET generation = generation + 1")
    target = orch.reconciler.stats.passes + 3
    await wait_until(lambda: orch.reconciler.stats.passes >= target, what="3 passes")
    assert (await owners(api))["moving"] == [1]


async def _no_owner(api) -> bool:
    return (await owners(api))["count"] == 0


async def test_unknown_and_expired_instances_are_told_to_register(api, fleet):
    response = await api.post("/heartbeat", json={"server_id": "ghost", "current_streams": []})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "instance_not_found"
    assert "POST /register" in response.json()["error"]["message"]
    response = await api.post("/streams/assign", json={"server_id": "ghost", "requested_count": 1})
    assert response.status_code == 404

    inst = fleet("inst-a", 5)
    await inst.register()
    orch = api.app.state.runtime.orchestrator
    await wait_until(lambda: _status_of(api, "inst-a", "expired"), timeout=30, what="lease expired")
    assert orch is not None
    response = await inst.heartbeat()
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "lease_expired"
    response = await api.post("/streams/assign", json={"server_id": "inst-a", "requested_count": 1})
    assert response.status_code == 409


async def _status_of(api, name: str, status: str) -> bool:
    items = (await api.get("/instances")).json()["instances"]
    return any(i["server_id"] == name and i["status"] == status for i in items)


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/register", {"ip": "10.0.0.1", "port": 80, "max_streams": 5}, "server_id"),
        ("/register", {"server_id": "a", "ip": "10.0.0.1", "port": 0, "max_streams": 5}, "port"),
        (
            "/register",
            {"server_id": "a", "ip": "10.0.0.1", "port": 80, "max_streams": 0},
            "max_streams",
        ),
        (
            "/register",
            {"server_id": "a b", "ip": "10.0.0.1", "port": 80, "max_streams": 5},
            "server_id",
        ),
        ("/register", {"server_id": "a", "ip": "", "port": 80, "max_streams": 5}, "ip"),
        ("/heartbeat", {"server_id": "a", "current_streams": [-1]}, "current_streams[0]"),
        ("/heartbeat", {"server_id": "a", "current_streams": ["7"]}, "current_streams[0]"),
        ("/heartbeat", {"server_id": "a", "current_streams": 7}, "current_streams"),
        ("/streams/assign", {"server_id": "a", "requested_count": -1}, "requested_count"),
        ("/streams/assign", {"server_id": "a"}, "requested_count"),
        ("/streams/release", {"server_id": "a", "stream_ids": [True]}, "stream_ids[0]"),
        ("/streams/release", {"server_id": "a"}, "stream_ids"),
    ],
)
async def test_invalid_bodies_get_422_saying_what_is_wrong(api, path, body, where):
    response = await api.post(path, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert where in error["message"]


async def test_with_tokens_instances_need_the_worker_token(
    make_settings, postgres_server, database, redis_url
):
    settings = make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=redis_url,
        STREAMORCH_WORKER_TOKEN="w-secret",
    )
    body = {"server_id": "inst-a", "ip": "10.0.0.7", "port": 8080, "max_streams": 5}
    async with serving(settings) as client:
        denied = await client.post("/register", json=body)
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "unauthorized"
        headers = {"Authorization": "Bearer w-secret"}
        assert (await client.post("/register", json=body, headers=headers)).status_code == 201
        assert (await client.get("/instances", headers=headers)).status_code == 200
