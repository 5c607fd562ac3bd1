"""`streamorch worker --exec 'sleep 1000'`: one child per stream, restarts, stops, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from streamorch.client import AdminClient, Assignment
from streamorch.client.supervisor import command_for
from tests.conftest import PostgresServer
from tests.e2e.harness import ROOT
from tests.sdk.conftest import ServerProcess
from tests.sdk.helpers import create_streams
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def children(worker: subprocess.Popen[bytes]) -> dict[str, int]:
    """stream key → pid of the live `sleep` the worker runs for it."""
    found: dict[str, int] = {}
    try:
        procs = psutil.Process(worker.pid).children()
    except psutil.NoSuchProcess:
        return found
    for proc in procs:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            key = proc.environ().get("STREAMORCH_STREAM_KEY")
        except psutil.Error:
            continue
        if key:
            found[key] = proc.pid
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def start_worker(server: ServerProcess, tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str = "rw", *extra: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "streamorch", "worker", "--name", name),
                    *("--capacity", "5", "--exec", "sleep 1000", "--grace", "2"),
                    *("--max-backoff", "0.5", *extra),
                ],
                cwd=ROOT,
                env={**os.environ, "STREAMORCH_SERVER": server.url},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def reported_restarts(postgres_server: PostgresServer, database: str, name: str) -> int:
    """`restarts` from the worker's last heartbeat metrics, as the server stored them."""
    with psycopg.connect(postgres_server.conninfo(database)) as conn:
        row = conn.execute("SELECT metrics FROM workers WHERE name = %s", (name,)).fetchone()
    return int(row[0].get("restarts", 0)) if row else 0


async def test_children_start_restart_stop_and_die_with_the_worker(
    server: ServerProcess, start_worker, postgres_server: PostgresServer, database: str
) -> None:
    async with AdminClient(server.url) as admin:
        await create_streams(admin, ["s1", "s2"])
        worker = start_worker()
        await wait_until(lambda: set(children(worker)) == {"s1", "s2"}, what="two children")
        first = children(worker)
        assert psutil.Process(first["s1"]).cmdline() == ["sleep", "1000"]

        os.kill(first["s1"], signal.SIGKILL)  # a crash: the supervisor starts it again
        await wait_until(
            lambda: children(worker).get("s1") not in (None, first["s1"]), what="s1 restarted"
        )
        assert children(worker)["s2"] == first["s2"]  # the other one was left alone
        await wait_until(
            lambda: reported_restarts(postgres_server, database, "rw") == 1,
            what="the restart reported in the heartbeat metrics",
        )

        await admin.delete_stream("s2")  # a revoke: SIGTERM, the child is gone
        await wait_until(lambda: not alive(first["s2"]), what="s2 stopped")
        assert set(children(worker)) == {"s1"}

        running = list(children(worker).values())
        worker.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel does it
        worker.wait(timeout=10)
        await wait_until(lambda: not any(alive(pid) for pid in running), what="no orphans")


async def test_sigterm_drains_and_exits_zero(server: ServerProcess, start_worker) -> None:
    async with AdminClient(server.url) as admin:
        await create_streams(admin, ["s1"])
        worker = start_worker("rw", "--drain-timeout", "1")
        await wait_until(lambda: set(children(worker)) == {"s1"}, what="child running")
        pid = children(worker)["s1"]
        worker.send_signal(signal.SIGTERM)
        await wait_until(lambda: worker.poll() is not None, timeout=60, what="worker exits")
        assert worker.returncode == 0
        assert not alive(pid)
        # Nowhere else to go: the worker stopped it and deregistered with force.
        workers = {w["name"]: w["status"] for w in await admin.list_workers("all")}
        assert workers.get("rw", "left") == "left"


def test_placeholders_are_replaced_per_argument() -> None:
    stream = Assignment("k;rm -rf /", "http://x/a b.mp3?x=$(id)", 1, 7)
    argv = command_for(["ffmpeg", "-i", "{url}", "--tag={key}:{token}", "{other}"], stream)
    assert argv == ["ffmpeg", "-i", stream.url, "--tag=k;rm -rf /:7", "{other}"]
