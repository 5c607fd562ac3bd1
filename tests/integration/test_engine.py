"""The engine end to end, in process: real PostgreSQL and Redis, the real app with its
reconciler and notifier, and simulated workers speaking the protocol (tests/support/simworker.py).

Every wait is bounded and polls a condition; nothing asserts how fast something happened.
Invariants are checked from both sides: the API (loads, events) and the workers' own
journal (never two workers at once, tokens only grow).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

import pytest

from tests.support.fleet import Fleet, all_events, ownership_violations
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

URL = "http://radio.example/{}.mp3"


# -- helpers ----------------------------------------------------------------------


def spec(key: str, **fields: Any) -> dict[str, Any]:
    return {"key": key, "url": URL.format(key), **fields}


async def bulk(api, keys, **fields: Any) -> dict[str, int]:
    response = await api.post(
        "/v1/streams/bulk", json={"streams": [spec(k, **fields) for k in keys]}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def status(api) -> dict[str, Any]:
    response = await api.get("/v1/status")
    assert response.status_code == 200, response.text
    return response.json()


async def workers(api, status_: str | None = None) -> dict[str, dict[str, Any]]:
    response = await api.get("/v1/workers", params={"status": status_ or "all"})
    assert response.status_code == 200, response.text
    return {w["name"]: w for w in response.json()["items"]}


async def last_event_id(api) -> int:
    events = await all_events(api)
    return events[-1]["id"] if events else 0


async def events_since(api, since: int) -> list[dict[str, Any]]:
    return [e for e in await all_events(api) if e["id"] > since]


async def settled(api, fleet: Fleet, keys) -> bool:
    """The workers run every key exactly once and the server has no move in flight."""
    if not fleet.runs_exactly(keys):
        return False
    counts = (await status(api))["streams"]
    return counts["assigned"] == len(set(keys)) and counts["moving"] == 0


async def balanced(api) -> bool:
    """I6 for equal capacities: active workers' loads differ by at most one stream."""
    loads = [w["load"] for w in (await workers(api, "active")).values()]
    return bool(loads) and max(loads) - min(loads) <= 1


async def check_capacity(api) -> None:
    """I4 from the API: no live worker carries more than its capacity."""
    for name, w in (await workers(api)).items():
        assert w["load"] <= w["capacity"], f"{name}: load {w['load']} > capacity {w['capacity']}"


async def heartbeat(api, worker: dict[str, Any], running: list[str], version: int | None = None):
    """A hand-made heartbeat; `version`: the desired set applied (None: nothing yet)."""
    return await api.post(
        f"/v1/workers/{worker['worker_id']}/heartbeat",
        json={"incarnation": worker["incarnation"], "running": running, "version": version},
        headers={"X-Worker-Secret": worker["secret"]},
    )


async def register(api, name: str, params: Any = None, **body: Any) -> dict[str, Any]:
    response = await api.post("/v1/workers/register", json={"name": name, **body}, params=params)
    assert response.status_code == 201, response.text
    return response.json()


def assert_clean(fleet: Fleet) -> None:
    problems = fleet.problems()
    assert problems == [], "\n".join(problems[:20])


# -- a fleet of 20 through failure, growth and drain ----------------------------------


async def test_fleet_places_fails_over_rebalances_and_drains(api):
    keys = [f"radio/{i:04d}" for i in range(1000)]
    async with Fleet(api, capacity=60) as fleet:
        journal = fleet.journal
        await fleet.start(20)
        assert await bulk(api, keys) == {"created": 1000, "updated": 0, "deleted": 0}

        # Initial placement: everything runs once, within capacity, evenly (I2, I4, I6).
        await wait_until(lambda: settled(api, fleet, keys), timeout=30, what="1000 streams placed")
        await check_capacity(api)
        loads = {n: w["load"] for n, w in (await workers(api)).items()}
        assert set(loads.values()) == {50}, loads
        # The server's view matches what the workers run, token for token.
        listing = (await api.get("/v1/streams", params={"limit": 1000})).json()
        assert listing["next_cursor"] is None
        owners = {k: v[0] for k, v in fleet.owners().items()}
        for item in listing["items"]:
            assert item["assignment"]["worker"] == owners[item["key"]]
            assert item["assignment"]["state"] == "granted"
            assert fleet[owners[item["key"]]].running[item["key"]] == item["assignment"]["token"]

        # A worker dies silently: after its lease its streams go to the survivors.
        victim = fleet["w005"]
        lost = set(victim.running)
        since_event, since = await last_event_id(api), journal.mark()
        await victim.kill()
        await wait_until(lambda: settled(api, fleet, keys), timeout=30, what="failover")
        await check_capacity(api)
        assert await balanced(api)
        # Only the dead worker's streams moved (I5): no survivor stopped anything.
        assert [r for r in journal.since(since, "stop") if r.worker != victim.name] == []
        assert {r.stream for r in journal.since(since, "start")} == lost
        # Each of them started elsewhere only after the dead worker's lease deadline.
        early = [r for r in journal.since(since, "start") if r.t <= victim.fence_at]
        assert early == [], f"started before {victim.fence_at:.3f}: {early[:3]}"

        events = await events_since(api, since_event)
        expired = [e for e in events if e["kind"] == "worker_expired"]
        assert [e["worker"] for e in expired] == [victim.name]
        released = {e["stream"] for e in events if e["kind"] == "revoked"}
        assert released == lost
        assert {e["reason"] for e in events if e["kind"] == "revoked"} == {"lease_expired"}

        # A worker joins: balance is restored by moves, each revoke → stop → grant.
        since_event, since = await last_event_id(api), journal.mark()
        newcomer = await fleet.add("w100")

        async def rebalanced() -> bool:
            return await settled(api, fleet, keys) and await balanced(api)

        await wait_until(rebalanced, timeout=30, what="rebalanced after a join")
        events = await events_since(api, since_event)
        moved = [e for e in events if e["kind"] == "revoked"]
        assert moved, "a join into a full-ish fleet must move streams"
        assert {e["reason"] for e in moved} == {"rebalance"}
        assert len(moved) <= math.ceil(len(keys) / 20) + 1
        for revoke in moved:
            trail = [e for e in events if e["stream"] == revoke["stream"]]
            kinds = [(e["kind"], e["worker"]) for e in trail]
            assert kinds == [
                ("revoked", revoke["worker"]),
                ("stopped", revoke["worker"]),
                ("moved", newcomer.name),
            ], kinds
            assert trail[0]["details"]["target"] == newcomer.worker_id
            assert trail[2]["details"]["from"] == trail[0]["worker_id"]
        assert len(newcomer.running) in (49, 50, 51)
        assert {r.stream for r in journal.since(since, "start")} == {e["stream"] for e in moved}

        # Drain: its streams move away, it gets nothing new, then it may leave.
        drained = fleet["w010"]
        since_event, since = await last_event_id(api), journal.mark()
        response = await api.post(f"/v1/workers/{drained.worker_id}/drain")
        assert response.status_code == 202, response.text
        response = await api.delete(f"/v1/workers/{drained.worker_id}")
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "worker_owns_streams"
        extra = [f"late/{i}" for i in range(10)]
        assert (await bulk(api, extra))["created"] == 10
        everything = keys + extra

        async def drained_out() -> bool:
            if not await settled(api, fleet, everything):
                return False
            return (await workers(api))[drained.name]["streams"] == 0

        await wait_until(drained_out, timeout=30, what="drained")
        assert drained.running == {}
        assert journal.starts_on(drained.name, since) == []
        assert (await workers(api))[drained.name]["status"] == "draining"
        events = await events_since(api, since_event)
        drain_revokes = [e for e in events if e["kind"] == "revoked"]
        assert {e["reason"] for e in drain_revokes} == {"drain"}
        assert {e["worker"] for e in drain_revokes} == {drained.name}
        assert [e["worker"] for e in events if e["kind"] == "drained"] == [drained.name]
        await drained.stop()
        response = await api.delete(f"/v1/workers/{drained.worker_id}")
        assert response.status_code == 204, response.text
        assert drained.name in await workers(api, "left")
        await wait_until(lambda: balanced(api), timeout=30, what="balanced after the drain")
        await check_capacity(api)

        assert_clean(fleet)
        assert ownership_violations(await all_events(api)) == []


# -- membership: incarnations, leases, forced removal ----------------------------------


async def test_incarnations_leases_and_forced_removal(api):
    keys = [f"m/{i}" for i in range(8)]
    async with Fleet(api, capacity=10) as fleet:
        journal = fleet.journal
        alpha = await fleet.add("alpha", rejoin=False)
        await bulk(api, keys)
        await wait_until(lambda: settled(api, fleet, keys), timeout=15, what="placed on alpha")
        beta = await fleet.add("beta")
        await wait_until(lambda: settled(api, fleet, keys), timeout=15)
        await wait_until(lambda: balanced(api), timeout=15, what="alpha and beta even")

        # Re-registering within the lease keeps every stream: 0 moves, new tokens.
        before = dict(alpha.running)
        assert len(before) == 4
        since_event, since = await last_event_id(api), journal.mark()
        assert await alpha.reregister() == len(before)
        assert alpha.incarnation == 2
        await wait_until(
            lambda: (
                alpha.running.keys() == before.keys()
                and all(alpha.running[k] > before[k] for k in before)
            ),
            timeout=10,
            what="alpha re-granted with new tokens",
        )
        assert journal.since(since, "stop") == []
        events = await events_since(api, since_event)
        assert [e for e in events if e["kind"] in ("revoked", "stopped", "assigned")] == []
        rejoined = [e for e in events if e["kind"] == "worker_rejoined"]
        assert [e["details"]["kept"] for e in rejoined] == [len(before)]

        # Another process cannot take the name of a live worker without its secret...
        taken = await api.post("/v1/workers/register", json={"name": "alpha", "capacity": 10})
        assert taken.status_code == 409
        assert taken.json()["error"]["code"] == "name_in_use"
        # ...unless an admin forces it: the old incarnation is fenced.
        since = journal.mark()
        newer = await register(api, "alpha", params={"force": "true"}, capacity=10)
        assert newer["incarnation"] == 3
        assert newer["kept_streams"] == len(before)
        await wait_until(lambda: alpha.conflicts, timeout=10, what="alpha told it is superseded")
        assert alpha.conflicts == ["superseded"]
        assert alpha.running == {}
        # Its long-poll saw the new incarnation's set (answers name their incarnation):
        # it never took the new tokens, it only stopped what it ran.
        assert [(r.kind, r.why) for r in journal.since(since)] == [("stop", "conflict")] * 4
        stale = await heartbeat(api, {**newer, "incarnation": 2}, [])
        assert stale.status_code == 409
        assert stale.json()["error"]["code"] == "superseded"

        # The new incarnation never heartbeats: after its lease, beta runs everything
        # and a late heartbeat is told its lease expired.
        await wait_until(lambda: settled(api, fleet, keys), timeout=15, what="beta took over")
        assert set(beta.running) == set(keys)
        late = await heartbeat(api, newer, [])
        assert late.status_code == 409
        assert late.json()["error"]["code"] == "lease_expired"

        # A crashed worker still owns its streams: DELETE is refused, force removes it.
        gamma = await fleet.add("gamma")
        await wait_until(lambda: balanced(api), timeout=15, what="beta and gamma even")
        await wait_until(lambda: settled(api, fleet, keys), timeout=15)
        owned = set(beta.running)
        await beta.crash()
        refused = await api.delete(f"/v1/workers/{beta.worker_id}")
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "worker_owns_streams"
        assert refused.json()["error"]["details"]["owned"] == len(owned)
        since_event = await last_event_id(api)
        forced = await api.delete(f"/v1/workers/{beta.worker_id}", params={"force": "true"})
        assert forced.status_code == 204, forced.text
        await wait_until(lambda: settled(api, fleet, keys), timeout=15, what="gamma took over")
        assert set(gamma.running) == set(keys)
        events = await events_since(api, since_event)
        assert {e["stream"] for e in events if e["reason"] == "forced_removal"} == owned
        assert (await workers(api))["beta"]["status"] == "left"

        assert_clean(fleet)
        assert ownership_violations(await all_events(api)) == []


# -- catalog changes under a running fleet ------------------------------------------------


async def test_deleted_stream_stays_with_its_owner_until_stopped(api):
    async with Fleet(api) as fleet:
        # A hand-driven worker, so the test decides when it reports the stream stopped.
        holder = await register(api, "holder", capacity=1)
        assert (await api.put("/v1/streams/s1", json={"url": URL.format("s1")})).status_code == 201

        async def granted() -> bool:
            answer = (await heartbeat(api, holder, [])).json()
            return [a["stream"] for a in answer["assignments"]] == ["s1"]

        await wait_until(granted, timeout=10, what="s1 granted to holder")
        first_token = (await api.get("/v1/streams/s1")).json()["assignment"]["token"]
        assert (await heartbeat(api, holder, ["s1"])).status_code == 200

        # Deleted while running: gone from the owner's desired set at once.
        assert (await api.delete("/v1/streams/s1")).status_code == 204
        answer = await heartbeat(api, holder, ["s1"])
        assert answer.json()["assignments"] == []
        without_s1 = answer.json()["version"]

        # Re-created under the same key while the old owner still runs it: it is not
        # granted anywhere until that owner reports it stopped (I1).
        assert (await api.put("/v1/streams/s1", json={"url": URL.format("s1")})).status_code == 201
        row = (await api.get("/v1/streams/s1")).json()["assignment"]
        assert (row["worker"], row["state"], row["reason"]) == ("holder", "revoking", "deleted")
        moving = (await api.get("/v1/streams", params={"state": "moving"})).json()["items"]
        assert [s["key"] for s in moving] == ["s1"]
        assert (await status(api))["streams"]["moving"] == 1
        # A worker with room joins (only now: earlier, a rebalance could move s1 first).
        other = await fleet.add("other", capacity=10)
        passes = (await status(api))["reconciler"]["passes"]

        async def passes_go_by() -> bool:
            assert (await heartbeat(api, holder, ["s1"])).status_code == 200
            assert "s1" not in other.running
            return (await status(api))["reconciler"]["passes"] >= passes + 5

        await wait_until(passes_go_by, timeout=10, what="reconcile passes while holder runs s1")
        row = (await api.get("/v1/streams/s1")).json()["assignment"]
        assert (row["worker"], row["state"]) == ("holder", "revoking")

        # The stop report names the applied set that lacks s1 (I9).
        stop_reported = time.monotonic()
        assert (await heartbeat(api, holder, [], version=without_s1)).status_code == 200
        await wait_until(lambda: "s1" in other.running, timeout=10, what="s1 granted to other")
        assert other.running["s1"] > first_token
        [start] = fleet.journal.starts_on("other")
        assert start.stream == "s1"
        assert start.t > stop_reported
        trail = [
            (e["kind"], e["worker"], e["reason"])
            for e in await all_events(api)
            if e["stream"] == "s1"
        ]
        assert trail == [
            ("stream_created", None, None),
            ("assigned", "holder", "placed"),
            ("stream_deleted", None, None),
            ("revoked", "holder", "deleted"),
            ("stream_created", None, None),
            ("stopped", "holder", "deleted"),
            ("assigned", "other", "placed"),
        ]

        # Disabling a running stream revokes it; nothing runs it afterwards.
        assert (
            await api.put("/v1/streams/s1", json={"url": URL.format("s1"), "enabled": False})
        ).status_code == 200
        await wait_until(lambda: "s1" not in other.running, timeout=10, what="s1 stopped")

        async def unowned() -> bool:
            return (await api.get("/v1/streams/s1")).json()["assignment"] is None

        await wait_until(unowned, timeout=10, what="s1 released after its stop")
        explained = (await api.get("/v1/streams/s1/explain")).json()["explanation"]
        assert "disabled" in explained
        disabled = [e for e in await all_events(api) if e["stream"] == "s1"][-2:]
        assert [(e["kind"], e["reason"]) for e in disabled] == [
            ("revoked", "disabled"),
            ("stopped", "disabled"),
        ]
        assert_clean(fleet)
        assert ownership_violations(await all_events(api)) == []


async def test_requires_only_lands_on_matching_workers(api):
    async with Fleet(api, capacity=5) as fleet:
        us = await fleet.add("us-1", labels={"region": "us"})
        assert (
            await api.put(
                "/v1/streams/eu/1", json={"url": URL.format("eu1"), "requires": {"region": "eu"}}
            )
        ).status_code == 201
        anywhere = [f"any/{i}" for i in range(3)]
        await bulk(api, anywhere)
        await wait_until(lambda: fleet.runs_exactly(anywhere), timeout=10, what="any/* on us-1")

        # No eu worker: the stream is unplaced and says why.
        body = (await api.get("/v1/streams/eu/1/explain")).json()
        assert body["assignment"] is None
        assert "region=eu" in body["explanation"], body
        assert "region=eu" in (await api.get("/v1/streams/eu/1")).json()["reason"]
        unassigned = (await api.get("/v1/streams", params={"state": "unassigned"})).json()
        assert [s["key"] for s in unassigned["items"]] == ["eu/1"]
        assert (await status(api))["streams"]["unassigned"] == 1

        eu = await fleet.add("eu-1", labels={"region": "eu", "tier": "gold"})
        await wait_until(lambda: "eu/1" in eu.running, timeout=10, what="eu/1 on eu-1")
        await wait_until(lambda: settled(api, fleet, [*anywhere, "eu/1"]), timeout=10)
        explained = (await api.get("/v1/streams/eu/1/explain")).json()["explanation"]
        assert "runs on worker" in explained

        # A running stream whose requirements change moves to a worker that meets them.
        on_us = sorted(us.running)[0]
        response = await api.put(
            f"/v1/streams/{on_us}", json={"url": URL.format(on_us), "requires": {"region": "eu"}}
        )
        assert response.status_code == 200
        await wait_until(lambda: on_us in eu.running, timeout=10, what="constraint move")
        await wait_until(lambda: settled(api, fleet, [*anywhere, "eu/1"]), timeout=10)
        trail = [e for e in await all_events(api) if e["stream"] == on_us]
        assert ("revoked", "constraint") in [(e["kind"], e["reason"]) for e in trail]
        assert {r.worker for r in fleet.journal.records if r.stream == "eu/1"} == {"eu-1"}
        last_start = [r for r in fleet.journal.since(0.0, "start") if r.stream == on_us][-1]
        assert last_start.worker == "eu-1"
        assert_clean(fleet)


# -- long-poll, status, events, listing -----------------------------------------------------


async def test_long_poll_returns_when_the_version_changes(api):
    worker = await register(api, "poller", capacity=3)
    path = f"/v1/workers/{worker['worker_id']}/assignments"
    current = (await api.get(path)).json()
    version = current["version"]
    assert current["assignments"] == []

    # Nothing changes: the long-poll answers the same version after its wait.
    idle = await api.get(path, params={"version": version, "wait": 0.3})
    assert idle.status_code == 200
    assert idle.json()["version"] == version

    wait = 5.0
    began = time.monotonic()
    poll = asyncio.create_task(api.get(path, params={"version": version, "wait": wait}))
    notifier = api.app.state.runtime.orchestrator.notifier
    await wait_until(lambda: worker["worker_id"] in notifier._waiters, what="the long-poll waits")
    assert (await api.put("/v1/streams/lp", json={"url": URL.format("lp")})).status_code == 201
    answer = await asyncio.wait_for(poll, wait + 5)
    elapsed = time.monotonic() - began
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # It returned because the version changed, before its wait was over.
    assert body["version"] > version
    assert elapsed < wait
    assert [a["stream"] for a in body["assignments"]] == ["lp"]
    assert body["assignments"][0]["token"] >= 1


async def test_status_events_and_listing(api):
    keys = [f"cat/{i:02d}" for i in range(20)]
    async with Fleet(api, capacity=12) as fleet:
        solo = await fleet.add("solo")
        assert await bulk(api, keys) == {"created": 20, "updated": 0, "deleted": 0}
        await wait_until(lambda: len(solo.running) == 12, timeout=10, what="12 running")

        async def counted() -> bool:
            return (await status(api))["streams"]["assigned"] == 12

        await wait_until(counted, timeout=10)
        body = await status(api)
        assert body["streams"] == {
            "enabled": 20,
            "disabled": 0,
            "assigned": 12,
            "moving": 0,
            "unassigned": 8,
        }
        assert body["workers"] == {"active": 1, "draining": 0, "expired": 0, "left": 0}
        assert (body["capacity"], body["load"], body["load_percent"]) == (12, 12, 100.0)
        assert body["balance"]["max_utilisation"] == 1.0
        assert body["reconciler"]["passes"] >= 1

        # Cursor pagination walks every stream exactly once, in key order.
        async def walk(**params: Any) -> list[str]:
            seen, cursor, pages = [], None, 0
            while True:
                query = {"limit": 7, **params, **({"cursor": cursor} if cursor else {})}
                page = (await api.get("/v1/streams", params=query)).json()
                pages += 1
                assert len(page["items"]) <= 7
                seen += [s["key"] for s in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    return seen
                assert pages < 10

        assert await walk() == keys
        assigned = await walk(state="assigned")
        assert assigned == sorted(solo.running)
        assert await walk(state="unassigned") == sorted(set(keys) - set(solo.running))
        assert await walk(state="moving") == []
        assert await walk(worker="solo") == assigned
        assert await walk(worker=solo.worker_id) == assigned

        # Events page by `since`: small pages add up to the whole log, once each, in order.
        everything = await all_events(api)
        paged, since = [], 0
        for _ in range(100):
            page = (await api.get("/v1/events", params={"since": since, "limit": 3})).json()
            if not page["items"]:
                assert page["next_since"] == since
                break
            paged += page["items"]
            since = page["next_since"]
        assert [e["id"] for e in paged] == [e["id"] for e in everything]
        assert [e["id"] for e in paged] == sorted({e["id"] for e in paged})
        kinds = [e["kind"] for e in everything]
        assert kinds.count("assigned") == 12
        assert {"worker_joined", "catalog_bulk", "assigned"} <= set(kinds)
        by_stream = (await api.get("/v1/events", params={"stream": assigned[0]})).json()["items"]
        assert [e["kind"] for e in by_stream] == ["assigned"]
        assert_clean(fleet)


# -- a known gap in I1 -------------------------------------------------------------------


async def test_a_report_older_than_a_grant_does_not_finish_its_move(api):
    async with Fleet(api, capacity=5) as fleet:
        a = await fleet.add("a")
        await wait_until(lambda: a.polling and a.version > 0, timeout=10, what="a long-polls")
        # a's link turns slow: its next heartbeat (running: nothing) waits to be sent;
        # the long-poll already on the wire still gets through.
        a.uplink.clear()
        await wait_until(lambda: a.parked >= 1, timeout=10, what="a heartbeat is held")
        assert (await api.put("/v1/streams/s", json={"url": URL.format("s")})).status_code == 201
        await wait_until(lambda: "s" in a.running, timeout=10, what="a starts s")
        b = await fleet.add("b")
        assert (await api.post(f"/v1/workers/{a.worker_id}/drain")).status_code == 202

        async def revoking() -> bool:
            return (await api.get("/v1/streams/s")).json()["assignment"]["state"] == "revoking"

        await wait_until(revoking, timeout=10, what="s revoked from a")
        # The held heartbeat arrives now; its answers are slow to come back.
        a.downlink.clear()
        a.uplink.set()
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: "s" in b.running, timeout=3, what="s granted to b")
        a.downlink.set()
        await wait_until(lambda: "s" not in a.running, timeout=10, what="a stops s")
        await wait_until(lambda: "s" in b.running, timeout=10, what="s on b")
        assert fleet.journal.overlaps() == [], "\n".join(fleet.journal.story("s"))
