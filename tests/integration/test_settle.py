"""A fleet assembling one worker after another: nothing is placed on the first members
only to move a moment later, and everything is placed once registrations are quiet."""

from __future__ import annotations

import pytest

from tests.asgi import serving
from tests.conftest import FAST_ENGINE
from tests.support.fleet import Fleet, all_events
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

KEYS = [f"s{i:03d}" for i in range(60)]


@pytest.fixture
async def api(make_settings, postgres_server, database, redis_url):
    # A quiet period far longer than the gap between two registrations of this test,
    # however loaded the machine: the fleet counts as one burst.
    settings = make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=redis_url,
        **FAST_ENGINE,
        PLACEMENT_SETTLE_S="3",
        PLACEMENT_SETTLE_MAX_S="60",
    )
    async with serving(settings) as client:
        yield client


async def test_a_fleet_registering_in_sequence_gets_each_stream_once(api):
    response = await api.post(
        "/v1/streams/bulk", json={"streams": [{"key": k, "url": "http://x"} for k in KEYS]}
    )
    assert response.status_code == 200, response.text
    async with Fleet(api, capacity=10) as fleet:
        for i in range(6):
            await fleet.add(f"w{i}")
            # While the fleet assembles, the streams wait (and /v1/streams says why).
            assert all(not w.running for w in fleet.live)

        async def waiting() -> bool:
            stream = (await api.get(f"/v1/streams/{KEYS[0]}")).json()
            return stream["assignment"] is None and "still registering" in stream["reason"]

        await wait_until(waiting, timeout=10, what="the reason a stream waits")
        await wait_until(lambda: fleet.runs_exactly(KEYS), timeout=30, what="all placed")
        assert sorted(len(w.running) for w in fleet.live) == [10] * 6
        kinds = [e["kind"] for e in await all_events(api)]
        assert "revoked" not in kinds
        assert kinds.count("assigned") == len(KEYS)
        assert fleet.problems() == []
        assert [r for r in fleet.journal.records if r.kind == "stop"] == []
