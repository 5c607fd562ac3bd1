"""The original orchestrator's instance protocols, over real HTTP against a real server
(uvicorn, PostgreSQL, Redis), with simulated instances of the three client generations
that behave like the originals, bugs included (tests/original_clients.py).

Timings are scaled down: 30 s heartbeats become 0.3 s, 3 s pulls 0.1 s, and the
instances' lease (COMPAT_LEASE_TTL, 150 s by default) 1.5 s.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from typer.testing import CliRunner

from streamorch.backing.embedded import DataDir, EmbeddedValkey
from streamorch.cli.main import app
from tests.conftest import FAST_ENGINE
from tests.original_clients import C1, C2, C3, Instance, Persisted, Timing, http_server, overlaps
from tests.support.fleet import Fleet, all_events
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

FAST = Timing(heartbeat=0.3, pull=0.1, retry_delays=(0.02, 0.04))
COMPAT = {**FAST_ENGINE, "COMPAT_LEASE_TTL": "1.5"}


@pytest.fixture
def compat_settings(make_settings, postgres_server, database, redis_url):
    return make_settings(DATABASE_URL=postgres_server.url(database), REDIS_URL=redis_url, **COMPAT)


@pytest.fixture
async def server(compat_settings) -> AsyncIterator[str]:
    async with http_server(compat_settings) as url:
        yield url


@pytest.fixture
async def api(server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server, timeout=10) as client:
        yield client


@contextlib.asynccontextmanager
async def instances(*made: Instance) -> AsyncIterator[list[Instance]]:
    try:
        yield list(made)
    finally:
        for inst in made:
            if inst.alive:
                await inst.kill()


async def catalog(api: httpx.AsyncClient, ids: range | list[int]) -> None:
    items = [{"key": str(i), "url": f"http://radio/{i}"} for i in ids]
    response = await api.post("/v1/streams/bulk", json={"mode": "upsert", "streams": items})
    assert response.is_success, response.text


async def owners(api: httpx.AsyncClient) -> dict[int, str]:
    body = (await api.get("/streams/assignments")).json()
    return {a["stream_id"]: a["server_id"] for a in body["assignments"]}


def cli(server: str, *args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"STREAMORCH_SERVER": server})
    assert result.exit_code == 0, result.output
    return result.stdout


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


# -- the wire format ---------------------------------------------------------------------


async def test_root_protocol_answers_as_the_clients_expect(api):
    await catalog(api, range(1, 8))
    # Server ids as deployed (an underscore is no v1 worker name, yet must register).
    other = {"server_id": "fingerv7_2", "ip": "10.0.0.2", "port": 8000, "max_streams": 1}
    assert ok(await api.post("/register", json=other))["status"] == "registered"
    register = {"server_id": "fp-1", "ip": "10.0.0.1", "port": 8000, "max_streams": 5}
    body = ok(await api.post("/register", json=register))
    assert body["status"] == "registered"
    assert body["reregistration"] is False

    # requested_count 0 or below asks for nothing.
    for count in (0, -3):
        body = ok(
            await api.post("/streams/assign", json={"server_id": "fp-1", "requested_count": count})
        )
        assert body == {"status": "no_streams", "assigned_streams": [], "message": body["message"]}

    body = ok(await api.post("/streams/assign", json={"server_id": "fp-1", "requested_count": 3}))
    assert body == {"status": "assigned", "assigned_streams": [1, 2, 3], "count": 3}
    body = ok(await api.post("/streams/assign", json={"server_id": "fp-1", "requested_count": 20}))
    assert body == {"status": "assigned", "assigned_streams": [4, 5], "count": 2}  # its capacity
    body = ok(await api.post("/streams/assign", json={"server_id": "fp-1", "requested_count": 20}))
    assert body["status"] == "no_capacity"
    assert body["assigned_streams"] == []

    # An integer count and unknown fields (system_metrics) are accepted.
    beat = {
        "server_id": "fp-1",
        "current_streams": 5,
        "status": "active",
        "system_metrics": {"cpu_percent": 1.0, "extra": [1, 2]},
        "something_new": True,
    }
    assert ok(await api.post("/heartbeat", json=beat)) == {"status": "heartbeat_updated"}

    body = ok(await api.get("/instances/fp-1"))
    assert body["status"] == "success"
    assert body["data"]["assigned_streams"] == [1, 2, 3, 4, 5]
    assert body["data"]["current_streams"] == 5
    assert body["data"]["generation"] == "C1"
    assert body["data"]["kind"] == "original"

    body = ok(await api.post("/streams/release", json={"server_id": "fp-1", "stream_ids": []}))
    assert body == {"status": "no_streams_to_release"}
    body = ok(await api.post("/streams/release", json={"server_id": "fp-1", "stream_ids": [2, 7]}))
    assert body == {"status": "released", "released_streams": [2], "count": 1}
    assert ok(await api.get("/instances/fp-1"))["data"]["assigned_streams"] == [1, 3, 4, 5]

    listed = ok(await api.get("/instances"))["instances"]
    assert [(i["server_id"], i["current_streams"]) for i in listed] == [
        ("fp-1", 5),
        ("fingerv7_2", 0),
    ]
    assert set(listed[0]) >= {
        "server_id",
        "ip",
        "port",
        "max_streams",
        "current_streams",
        "status",
        "registered_at",
        "last_heartbeat",
    }
    # A released stream goes to the next puller.
    body = ok(await api.post("/streams/assign", json={"server_id": "fingerv7_2"}))
    assert body == {"status": "assigned", "assigned_streams": [2], "count": 1}
    assignments = ok(await api.get("/streams/assignments"))["assignments"]
    assert sorted(a["stream_id"] for a in assignments if a["server_id"] == "fp-1") == [1, 3, 4, 5]
    status = ok(await api.get("/status"))
    assert status["orchestrator_status"] == "active"
    assert status["streams"]["total"] == 7

    # An instance the server does not know: 200 everywhere, never 404/409.
    body = ok(await api.post("/streams/assign", json={"server_id": "ghost", "requested_count": 2}))
    assert body["status"] == "no_streams"
    assert ok(
        await api.post("/streams/release", json={"server_id": "ghost", "stream_ids": [1]})
    ) == {
        "status": "released",
        "released_streams": [],
        "count": 0,
    }
    assert ok(await api.post("/heartbeat", json={"server_id": "ghost", "current_streams": 0})) == {
        "status": "heartbeat_updated"
    }
    ghost = ok(await api.get("/instances/ghost"))["data"]
    assert ghost["status"] == "active"
    assert ghost["max_streams"] == 20
    assert (await api.get("/instances/nobody")).status_code == 404


async def test_api_family_answers_as_the_third_generation_expects(api):
    await catalog(api, range(10, 14))
    register = {
        "instance_id": "fp-3",
        "worker_type": "fingerv7",
        "capacity": 3,
        "ip": "10.0.0.3",
        "port": 8000,
        "status": "active",
        "metadata": {"version": "7", "capabilities": ["fingerprinting"]},
    }
    body = ok(await api.post("/api/workers/register", json=register))
    assert body["success"] is True
    assert body["worker_id"] == "fp-3"

    params = {"worker_id": "fp-3", "capacity": 2, "worker_type": "fingerv7"}
    body = ok(await api.get("/api/streams/assign", params=params))
    assert body["status"] == "assigned"
    assert body["assigned_streams"] == [10, 11]
    assert body["total"] == 2
    assert body["worker_id"] == "fp-3"
    assert body["streams"][0] == {
        "stream_id": "10",
        "id": 10,
        "stream_url": "http://radio/10",
        "url": "http://radio/10",
        "name": "10",
        "metadata": {},
    }
    body = ok(await api.get("/api/streams/assign", params={**params, "capacity": 0}))
    assert body["status"] == "no_streams"
    assert body["assigned_streams"] == []

    beat = {
        "worker_instance_id": "fp-3",
        "status": "active",
        "current_load": 2,
        "available_capacity": 1,
        "metrics": {"cpu": 1},
    }
    assert ok(await api.post("/api/heartbeat", json=beat))["success"] is True
    update = {"stream_id": "10", "worker_instance_id": "fp-3", "status": "completed"}
    assert ok(await api.post("/api/streams/update", json=update))["success"] is True
    assert (await owners(api))[10] == "fp-3"  # an update never frees a stream

    workers = ok(await api.get("/api/workers"))
    assert [(w["instance_id"], w["current_load"], w["generation"]) for w in workers["workers"]] == [
        ("fp-3", 2, "C3")
    ]
    # C3 releases on the root path.
    body = ok(await api.post("/streams/release", json={"server_id": "fp-3", "stream_ids": [11]}))
    assert body["released_streams"] == [11]
    # A heartbeat from an unknown worker registers it, with the capacity it reports.
    ghost = {**beat, "worker_instance_id": "fp-9", "current_load": 0, "available_capacity": 4}
    assert ok(await api.post("/api/heartbeat", json=ghost))["success"] is True
    assert ok(await api.get("/instances/fp-9"))["data"]["max_streams"] == 4


async def test_three_generations_share_fifty_streams(server, api):
    await catalog(api, range(1, 51))
    persisted = Persisted()
    made = [
        C1(server, "c1", max_streams=20, timing=FAST),
        C2(server, "c2", max_streams=20, timing=FAST, persisted=persisted),
        C3(server, "c3", max_streams=20, timing=FAST, persisted=persisted),
    ]
    async with instances(*made) as fleet:
        for inst in fleet:
            await inst.start()
        c1, c2, c3 = fleet
        await wait_until(lambda: c1.checks >= 3 and c2.heartbeats >= 3, what="three beats")
        held = await owners(api)
        assert sorted(held) == list(range(1, 51))  # all placed
        assert overlaps(fleet) == {}
        # Each runs exactly what the server says it holds; greedy, lowest ids first.
        for inst in fleet:
            assert inst.running == {i for i, name in held.items() if name == inst.server_id}
            assert len(inst.listed) == len(set(inst.listed))  # never the same id twice
            assert inst.errors == []
        assert c1.running == set(range(1, 21))  # its whole share in its first pull
        assert c2.handed == [list(range(21, 41))]  # C2 pulls only once
        assert c3.running == set(range(41, 51))
        assert c1.consistent_checks == c1.checks  # the consistency check passes
        listed = {w["name"]: w for w in (await api.get("/v1/workers")).json()["items"]}
        assert {n: (w["kind"], w["generation"]) for n, w in listed.items()} == {
            "c1": ("original", "C1"),
            "c2": ("original", "C2"),
            "c3": ("original", "C3"),
        }
        assert listed["c2"]["pinned_streams"] == [str(i) for i in sorted(range(21, 41), key=str)]
        # The CLI lists them with kind and generation, pinned streams and events too.
        listing = await anyio.to_thread.run_sync(cli, server, "workers", "list")
        assert "original (C2)" in listing
        assert "original (C3)" in listing
        log = await anyio.to_thread.run_sync(cli, server, "events", "--limit", "1000")
        assert "c1 (original C1)" in log
        explain = (await api.get("/v1/streams/25/explain")).json()
        assert "pinned" in str(explain)
        assert "'c2'" in str(explain)


async def test_sigkill_of_one_fails_over_on_the_survivors_next_pull(server, api):
    await catalog(api, range(1, 31))
    c1 = C1(server, "c1", max_streams=20, timing=FAST)
    c3 = C3(server, "c3", max_streams=40, timing=FAST)
    async with instances(c1, c3):
        await c1.start()
        await c3.start()
        await wait_until(lambda: c3.running == set(range(21, 31)), what="c3 has 21-30")
        assert c1.running == set(range(1, 21))

        await c1.kill()  # SIGKILL: no release
        await wait_until(lambda: c3.running == set(range(1, 31)), timeout=30, what="failover")
        assert c3.handed[-1] == list(range(1, 21))  # one delta, each id once
        assert len(c3.listed) == len(set(c3.listed))
        assert sorted(await owners(api)) == list(range(1, 31))
        assert set((await owners(api)).values()) == {"c3"}

        events = await all_events(api)
        expired = next(e["id"] for e in events if e["kind"] == "worker_expired")
        pulled = [e for e in events if e["kind"] == "assigned" and e["worker"] == "c3"]
        assert {e["stream"] for e in pulled if e["id"] > expired} == {str(i) for i in range(1, 21)}
        assert all(e["reason"] == "pulled" for e in pulled)
        assert c3.errors == []


async def test_mixed_fleet_churn_moves_nothing_off_live_old_instances(server, api):
    await catalog(api, range(1, 41))
    c1 = C1(server, "c1", max_streams=10, timing=FAST)
    c3 = C3(server, "c3", max_streams=10, timing=FAST)
    async with instances(c1, c3), Fleet(server, capacity=30) as fleet:
        await c1.start()
        await c3.start()
        await wait_until(lambda: len(c3.running) == 10, what="c3 full")
        old_sets = {"c1": set(c1.running), "c3": set(c3.running)}
        assert old_sets == {"c1": set(range(1, 11)), "c3": set(range(11, 21))}

        def everything_runs_once() -> bool:
            runs = {str(i) for i in c1.running | c3.running}
            sdk = fleet.owners()
            return (
                set(sdk) | runs == {str(i) for i in range(1, 41)}
                and not set(sdk) & runs
                and all(len(v) == 1 for v in sdk.values())
            )

        await fleet.start(2, prefix="sdk")  # new workers take the rest at once
        await fleet.wait_until(everything_runs_once, what="all 40 run once")
        await fleet.start(2, prefix="more")  # rebalancing among new workers only
        await fleet.wait_until(
            lambda: everything_runs_once() and min(len(w.running) for w in fleet.live) >= 4,
            what="rebalanced",
        )
        await fleet["sdk000"].kill()  # a new worker dies: its streams go to new workers
        await fleet["sdk001"].stop()  # one leaves cleanly
        await fleet.wait_until(everything_runs_once, what="all 40 run once after churn")

        events = await all_events(api)
        off_old = [
            e
            for e in events
            if e["worker"] in ("c1", "c3") and e["kind"] in ("revoked", "stopped", "moved")
        ]
        assert off_old == []  # 0 streams moved away from a live old instance
        assert {"c1": c1.running, "c3": c3.running} == old_sets
        assert any(e["kind"] == "revoked" and e["reason"] == "rebalance" for e in events)
        assert fleet.problems() == []
        assert c1.errors == []
        assert c3.errors == []
        assert overlaps([c1, c3]) == {}


async def test_restart_under_the_same_id_gets_its_streams_back(server, api):
    await catalog(api, range(1, 16))
    persisted = Persisted()
    c1 = C1(server, "c1", max_streams=10, timing=FAST)
    c3 = C3(server, "c3", max_streams=5, timing=FAST, persisted=persisted)
    async with instances(c1, c3):
        await c1.start()
        await c3.start()
        await wait_until(lambda: len(c3.running) == 5, what="c3 full")
        before = await owners(api)

        # execv every 30 min: a new process under the same id, no release first.
        await c1.kill()
        await c3.kill()
        c1 = C1(server, "c1", max_streams=10, timing=FAST)
        c3 = C3(server, "c3", max_streams=5, timing=FAST, persisted=persisted)
        async with instances(c1, c3):
            await c1.start()  # its first pull hands its streams back
            assert c1.running == set(range(1, 11))
            await c3.start()  # resumes its persisted list, which stays its own
            assert c3.running == set(range(11, 16))
            await wait_until(lambda: c1.checks >= 2, what="consistency checks")
            assert c1.consistent_checks == c1.checks
            assert await owners(api) == before
            events = await all_events(api)
            rejoined = [e for e in events if e["kind"] == "worker_rejoined"]
            # C3 registers twice at start (main, then reload_streams); each time kept all.
            assert {e["worker"]: e["details"]["kept"] for e in rejoined} == {"c1": 10, "c3": 5}
            assert not [e for e in events if e["kind"] in ("revoked", "stopped")]
            assert c1.errors == []
            assert c3.errors == []


async def test_heartbeat_after_expiry_revives_the_instance(server, api):
    await catalog(api, range(1, 11))
    c1 = C1(server, "c1", max_streams=10, timing=FAST)
    async with instances(c1), Fleet(server, capacity=4) as fleet:
        await c1.start()
        assert c1.running == set(range(1, 11))
        c1.offline = True  # cut off longer than its lease
        await fleet.start(1, prefix="sdk")  # takes 4 of its streams once its lease ended
        await fleet.wait_until(lambda: len(fleet.owners()) == 4, what="4 failed over")
        taken = {int(k) for k in fleet.owners()}

        c1.offline = False
        await wait_until(lambda: c1.heartbeats >= 2, what="heartbeats again")
        events = await all_events(api)
        revived = [e for e in events if e["kind"] == "instance_revived"]
        assert len(revived) == 1
        assert {int(k) for k in revived[0]["details"]["lost"]} == taken
        assert {int(k) for k in revived[0]["details"]["recovered"]} == set(range(1, 11)) - taken
        held = await owners(api)
        assert {i for i, name in held.items() if name == "c1"} == set(range(1, 11)) - taken
        data = ok(await api.get("/instances/c1"))["data"]
        assert data["status"] == "active"
        assert data["assigned_streams"] == list(range(1, 11))  # what it was handed
        assert {e.split(":")[0] for e in c1.errors} <= {
            "POST /heartbeat",
            "GET /instances/c1",
            "POST /streams/assign",
        }  # only while cut off: never a 404 or 409 after
        assert not [e for e in c1.errors if "HTTP" in e]


async def test_redis_outage_keeps_the_resilient_clients_connected(
    make_settings, postgres_server, database, data_dir
):
    valkey = EmbeddedValkey(DataDir(data_dir / "valkey-under-test"))
    port = valkey.start().port
    settings = make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=f"redis://:{valkey.password}@127.0.0.1:{port}/0",
        **COMPAT,
    )
    try:
        async with http_server(settings) as url, httpx.AsyncClient(base_url=url) as api:
            await catalog(api, range(1, 5))
            c2 = C2(url, "c2", max_streams=2, timing=FAST)
            c3 = C3(url, "c3", max_streams=2, timing=FAST)
            async with instances(c2, c3):
                await c2.start()
                await c3.start()
                await anyio.to_thread.run_sync(valkey.stop)

                async def degraded() -> bool:
                    return (await api.get("/health")).json()["degraded"] == ["redis"]

                await wait_until(degraded, what="/health lists Redis as degraded")
                body = ok(await api.get("/health"))
                assert body["status"] == "healthy"
                beats = {"c2": c2.heartbeats, "c3": c3.heartbeats}
                await wait_until(
                    lambda: c2.heartbeats >= beats["c2"] + 3 and c3.heartbeats >= beats["c3"] + 3,
                    what="heartbeats during the outage",
                )
                assert not c2.local_mode
                assert not c3.local_mode
                assert c2.errors == []
                assert c3.errors == []
                assert sorted(await owners(api)) == [1, 2, 3, 4]
    finally:
        await anyio.to_thread.run_sync(valkey.stop)


async def test_second_generation_restart_frees_what_it_would_not_run(server, api):
    await catalog(api, range(1, 7))
    persisted = Persisted()
    c2 = C2(server, "c2", max_streams=4, timing=FAST, persisted=persisted)
    c3 = C3(server, "c3", max_streams=6, timing=FAST)
    async with instances(c2):
        await c2.start()
        assert c2.running == {1, 2, 3, 4}
        await wait_until(lambda: c2.heartbeats >= 1, what="a heartbeat: it is known as C2")
        await c2.kill()  # restarts without releasing
    c2 = C2(server, "c2", max_streams=4, timing=FAST, persisted=persisted)
    async with instances(c2, c3):
        # B9: it counts its persisted list (requested_count 0) and runs only what it pulls,
        # so what it owned is freed rather than reserved for it, running nowhere.
        await c2.start()
        assert c2.running == set()
        await c3.start()
        await wait_until(lambda: c3.running == set(range(1, 7)), what="c3 takes all six")
        events = await all_events(api)
        freed = [e for e in events if e["kind"] == "stopped" and e["reason"] == "unclaimed"]
        assert sorted(int(e["stream"]) for e in freed) == [1, 2, 3, 4]
        assert c2.errors == []
        assert overlaps([c2, c3]) == {}
