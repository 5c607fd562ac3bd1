"""Which reports finish a move (I1, I9): only one naming an applied version at or after
the revoke, or the old owner's lease expiry. Passes are run by hand, one at a time."""

from __future__ import annotations

import pytest

from streamorch.backing import endpoints
from streamorch.core import engine
from streamorch.domain.models import Policy
from streamorch.domain.records import StreamSpec
from streamorch.store.database import DatabaseManager
from streamorch.store.postgres import EngineStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(settings):
    async with DatabaseManager(endpoints.postgres_target(settings), settings) as db:
        yield EngineStore(db)


async def _register(store: EngineStore, name: str) -> dict:
    row, _ = await store.register(name=name, capacity=10, labels={}, address=None, ttl=60)
    return row


async def _beat(store: EngineStore, row: dict, running: list[str], **kw):
    return await store.heartbeat(
        row["id"],
        incarnation=row["incarnation"],
        running=running,
        draining=False,
        metrics={},
        ttl=60,
        **kw,
    )


async def _holding(store: EngineStore, key: str) -> tuple[str, str] | None:
    async with store.db.connection() as conn:
        cur = await conn.execute(
            "SELECT w.name, a.state FROM assignments a JOIN workers w ON w.id = a.worker_id "
            "WHERE a.stream_key = %s",
            (key,),
        )
        return await cur.fetchone()


async def _pass(store: EngineStore):
    result = await engine.reconcile_pass(store, Policy(), None, lease_ttl=60)
    assert result.ran
    return result


async def _revoked_from_first(store: EngineStore) -> tuple[dict, dict, int]:
    """`s` granted to `first`, which has not applied anything, then moved towards `second`.

    Returns both workers and the version of `first`'s desired set that lacks `s`.
    """
    first = await _register(store, "first")
    await store.upsert_stream(StreamSpec("s", "http://radio.example/s.mp3"))
    await _pass(store)
    answer = await _beat(store, first, [])  # the SDK's first heartbeat: no version yet
    assert [a["stream"] for a in answer.assignments] == ["s"]
    second = await _register(store, "second")
    await store.drain(first["id"])
    await _pass(store)
    assert await _holding(store, "s") == ("first", "revoking")
    lacking = (await _beat(store, first, [])).version
    return first, second, lacking


async def test_a_versionless_report_never_finishes_a_move(store):
    first, _, _ = await _revoked_from_first(store)
    # `first` still reports without a version: it may be about to start `s` from the
    # answer that granted it, so its empty running set proves nothing.
    for _ in range(3):
        await _beat(store, first, [])
        assert (await _pass(store)).finished == 0
        assert await _holding(store, "s") == ("first", "revoking")


async def test_a_report_naming_a_version_before_the_revoke_does_not_finish_it(store):
    first, _, lacking = await _revoked_from_first(store)
    await _beat(store, first, [], acked_version=lacking - 1)
    assert (await _pass(store)).finished == 0
    assert await _holding(store, "s") == ("first", "revoking")


async def test_a_report_naming_the_revoke_version_finishes_the_move(store):
    first, _, lacking = await _revoked_from_first(store)
    await _beat(store, first, [], acked_version=lacking)
    result = await _pass(store)
    assert result.finished == 1
    assert await _holding(store, "s") == ("second", "granted")


async def test_lease_expiry_finishes_the_move_without_a_report(store):
    first, _, _ = await _revoked_from_first(store)
    await _beat(store, first, [])
    async with store.db.connection() as conn:
        await conn.execute(
            "UPDATE workers SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
            (first["id"],),
        )
    result = await _pass(store)
    assert result.expired == [str(first["id"])]
    assert await _holding(store, "s") == ("second", "granted")
