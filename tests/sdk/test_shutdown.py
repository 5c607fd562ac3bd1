"""Graceful shutdown: a blocking `Worker` process drains on SIGTERM and exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streamorch.client import AdminClient, AsyncWorker
from tests.e2e.harness import ROOT
from tests.sdk.conftest import ServerProcess
from tests.sdk.helpers import Calls, create_streams
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

PROGRAM = textwrap.dedent(
    """
    import sys, threading, time
    from streamorch.client import Worker

    lock = threading.Lock()  # callbacks run in threads: one whole line at a time

    def say(kind, key):
        with lock:
            sys.stdout.write(f"{kind} {time.time()} {key}\\n")
            sys.stdout.flush()

    def on_assign(stream):
        say("assign", stream.stream)

    def on_revoke(stream):
        time.sleep(0.1)  # a stop takes a moment: the move must wait for it
        say("revoke", stream.stream)

    Worker(sys.argv[1], name="leaver", on_assign=on_assign, on_revoke=on_revoke,
           drain_timeout=60).run()
    say("exited", "-")
    """
)


def journal(path: Path) -> list[tuple[str, float, str]]:
    out = []
    for line in path.read_text().split("\n")[:-1]:  # complete lines: the last may be half-written
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("assign", "revoke", "exited"):
            out.append((parts[0], float(parts[1]), parts[2]))
    return out


def runs(path: Path) -> set[str]:
    running: set[str] = set()
    for kind, _, key in journal(path):
        if kind == "assign":
            running.add(key)
        elif kind == "revoke":
            running.discard(key)
    return running


async def test_sync_worker_drains_on_sigterm(server: ServerProcess, tmp_path: Path) -> None:
    keys = [f"s{i}" for i in range(6)]
    async with AdminClient(server.url) as admin:
        await create_streams(admin, keys)
        script = tmp_path / "leaver.py"
        script.write_text(PROGRAM)
        out = tmp_path / "leaver.out"
        with out.open("wb") as sink:
            proc = subprocess.Popen(  # noqa: ASYNC220 - started once, watched by polling
                [sys.executable, str(script), server.url],
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        calls = Calls()
        try:
            await wait_until(lambda: runs(out) == set(keys), what="the leaver runs everything")
            stayer = AsyncWorker(
                server.url, name="stayer", on_assign=calls.on_assign, on_revoke=calls.on_revoke
            )
            async with stayer:
                signalled = time.time()
                proc.send_signal(signal.SIGTERM)
                await wait_until(lambda: proc.poll() is not None, timeout=90, what="leaver exits")
                assert proc.returncode == 0, out.read_text()
                assert runs(out) == set()
                await wait_until(lambda: set(stayer.running) == set(keys), what="all moved")

                # Revoke, then grant: each stream stopped on the leaver before it started here.
                stopped = {key: t for kind, t, key in journal(out) if kind == "revoke"}
                for at, stream in calls.assigned:
                    assert at >= stopped[stream.stream], f"{stream.stream} ran twice"
                    assert at >= signalled
                # Deregistered: the leaver is no longer a member of the fleet.
                workers = {w["name"]: w for w in await admin.list_workers("all")}
                assert workers.get("leaver", {"status": "left"})["status"] == "left"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
