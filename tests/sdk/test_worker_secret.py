"""The SDK keeps its worker's secret: it sends it on every call, proves with it on a
re-registration, and with `secret_file` a restarted worker keeps its streams."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from pathlib import Path

import pytest

from streamorch.client import AdminClient, AsyncWorker
from tests.sdk.conftest import ServerProcess
from tests.sdk.helpers import Calls, create_streams
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def new_worker(server: ServerProcess, calls: Calls, **kw) -> AsyncWorker:
    return AsyncWorker(
        server.url, name="w1", on_assign=calls.on_assign, on_revoke=calls.on_revoke, **kw
    )


async def test_a_restart_with_its_secret_file_keeps_the_streams(
    server: ServerProcess, tmp_path: Path
) -> None:
    secret_file = tmp_path / "state" / "w1.secret"
    async with AdminClient(server.url) as admin:
        await create_streams(admin, ["a", "b"])
    first = new_worker(server, Calls(), secret_file=secret_file)
    await first.start()
    await wait_until(lambda: set(first.running) == {"a", "b"}, what="both run")
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(secret_file.read_text()) >= 32
    await first.stop()  # a crash: the server is told nothing, the lease still runs

    second = new_worker(server, Calls(), secret_file=secret_file)
    async with second:
        assert second.registration is not None
        assert second.registration.incarnation == first.incarnation + 1
        assert second.registration.kept_streams == 2  # it proved to be the same worker
        await wait_until(lambda: set(second.running) == {"a", "b"}, what="running again")


async def test_a_second_process_with_the_same_name_cannot_fence_the_first(
    server: ServerProcess,
) -> None:
    async with AdminClient(server.url) as admin:
        await create_streams(admin, ["a"])
    calls = Calls()
    async with new_worker(server, calls) as first:
        await wait_until(lambda: set(first.running) == {"a"}, what="a runs")
        impostor = new_worker(server, Calls())
        joining = asyncio.create_task(impostor.start())  # retries on 409 name_in_use
        beats = first.heartbeats
        await wait_until(lambda: first.heartbeats >= beats + 5, what="five more heartbeats")
        assert not joining.done()
        assert impostor.registration is None
        assert first.conflicts == 0
        assert calls.revoked_keys() == set()
        joining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await joining
        await impostor.stop()
