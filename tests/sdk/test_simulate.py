"""The simulator on a small fleet: it converges, fails over, and sees no two owners."""

from __future__ import annotations

import pytest

from streamorch.client import AdminClient
from streamorch.client.simulate import simulate
from tests.sdk.conftest import ServerProcess

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("kill_mode", ["crash", "partition"])
async def test_small_run_has_no_duplicate_owner(server: ServerProcess, kill_mode: str) -> None:
    lines: list[str] = []
    report = await simulate(
        server.url,
        workers=5,
        streams=50,
        kill=1,
        join=1,
        duration=5,
        kill_mode=kill_mode,
        seed=1,
        say=lines.append,
    )
    text = "\n".join(report.lines() + lines)
    assert report.unconverged == [], text
    assert report.duplicate_s == 0, report.duplicates
    assert report.ok
    assert report.converge_s == report.converge_s  # not NaN: it converged
    assert report.failover_s, text  # the killed worker's streams ran elsewhere
    assert report.join_moves >= report.join_optimum > 0, text  # the newcomer got its share
    assert report.no_owner_s > 0  # a failover leaves streams ownerless for a while
    # The simulator cleans up after itself.
    async with AdminClient(server.url) as admin:
        assert (await admin.list_streams())["items"] == []
        assert await admin.list_workers() == []  # no live worker left behind
        departed = {w["status"] for w in await admin.list_workers("all")}
        assert departed <= {"left", "expired"}, departed  # crashed ones simply expired
