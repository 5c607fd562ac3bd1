"""Real signals to real worker processes, in every state: registering against a server
that does not answer, running, draining, fenced; and two signals a few ms apart.

The SDK program journals every start and stop; `streamorch worker` is checked for its
exit codes and its one-line messages on errors that cannot fix themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamorch.cli.worker import EXIT_FAILED, EXIT_STOPPED_NOW, EXIT_USAGE
from streamorch.client import AdminClient
from tests.e2e.harness import ROOT, free_port
from tests.sdk.conftest import ServerProcess
from tests.sdk.helpers import create_streams
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

EXIT_WAIT = 60.0  # a bound for a process to exit, far above what it needs

PROGRAM = textwrap.dedent(
    """
    import sys, threading, time
    from streamorch.client import Worker

    lock = threading.Lock()

    def say(*words):
        with lock:
            print(*words, flush=True)

    worker = Worker(
        sys.argv[1], name=sys.argv[2], drain_timeout=float(sys.argv[3]),
        request_timeout=1, max_backoff=0.2,
        on_assign=lambda s: say("start", s.stream, s.token),
        on_revoke=lambda s: say("stop", s.stream, s.token),
    )
    say("ready")
    worker.run()
    say("exited", worker.interrupted, worker.worker.drained)
    """
)


class Program:
    """One SDK worker process and its journal."""

    def __init__(self, tmp_path: Path, server: str, name: str, drain_timeout: float) -> None:
        script = tmp_path / "program.py"
        script.write_text(PROGRAM)
        self.out = tmp_path / f"{name}.out"
        with self.out.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), server, name, str(drain_timeout)],
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def lines(self) -> list[list[str]]:
        # Complete lines only: the program may be halfway through writing the last one.
        complete = self.out.read_text().split("\n")[:-1]
        return [line.split() for line in complete if line.strip()]

    def running(self) -> set[str]:
        now: set[str] = set()
        for words in self.lines():
            if words[0] == "start":
                now.add(words[1])
            elif words[0] == "stop":
                now.discard(words[1])
        return now

    def starts(self, key: str) -> int:
        return sum(1 for w in self.lines() if w[:2] == ["start", key])

    def said(self, word: str) -> bool:
        return any(w[0] == word for w in self.lines())

    def signal(self, *signals: signal.Signals, gap: float = 0.003) -> None:
        for i, sig in enumerate(signals):
            if i:
                time.sleep(gap)  # two signals a few ms apart, as a terminal or an init does
            self.proc.send_signal(sig)

    async def exited(self) -> int:
        await wait_until(lambda: self.proc.poll() is not None, timeout=EXIT_WAIT, what="exit")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def programs(tmp_path: Path) -> Iterator:
    started: list[Program] = []

    def start(server: str, name: str = "p", drain_timeout: float = 60.0) -> Program:
        program = Program(tmp_path, server, name, drain_timeout)
        started.append(program)
        return program

    yield start
    for program in started:
        program.kill()


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGTERM)])
async def test_a_worker_that_cannot_register_stops_on_a_signal(programs, signals) -> None:
    program = programs(f"http://127.0.0.1:{free_port()}")  # nobody listens there
    await wait_until(lambda: program.said("ready"), what="program started")
    await wait_until(lambda: b"cannot register" in program.out.read_bytes(), what="retrying")
    program.signal(*signals)
    assert await program.exited() == 0, program.out.read_text()
    assert program.said("exited")


async def test_signals_in_every_state(server: ServerProcess, programs, tmp_path: Path) -> None:
    # One server for all of them, in an order where each leaves nothing behind; the last
    # one takes the server away.
    keys = [f"k{i}" for i in range(6)]
    async with AdminClient(server.url) as admin:
        await two_signals_a_few_ms_apart_after_a_fast_drain_exit_zero(admin, server.url, programs)
        await create_streams(admin, keys)
        await signals_while_draining_stop_everything_once(admin, server.url, programs, keys)
        await reference_worker_exit_codes(admin, server.url, tmp_path, keys)
    await a_fenced_worker_stops_on_a_signal(server, programs, keys)


async def two_signals_a_few_ms_apart_after_a_fast_drain_exit_zero(
    admin: AdminClient, url: str, programs
) -> None:
    program = programs(url, "idle")
    await wait_until(lambda: _status(admin, "idle", "active"), what="registered and heartbeating")
    program.signal(signal.SIGTERM, signal.SIGTERM)
    assert await program.exited() == 0, program.out.read_text()
    assert await _status(admin, "idle", "left")


async def signals_while_draining_stop_everything_once(
    admin: AdminClient, url: str, programs, keys: list[str]
) -> None:
    program = programs(url, "drainer")  # alone: its drain can never finish
    await wait_until(lambda: program.running() == set(keys), what="all running")
    program.signal(signal.SIGTERM)
    await wait_until(lambda: _status(admin, "drainer", "draining"), what="draining")
    program.signal(signal.SIGINT)  # the second signal: stop now
    assert await program.exited() == 0, program.out.read_text()
    assert ["exited", "True", "False"] in program.lines()  # interrupted, not drained
    assert program.running() == set()
    assert all(program.starts(key) == 1 for key in keys), program.out.read_text()
    assert await _status(admin, "drainer", "left")


async def reference_worker_exit_codes(
    admin: AdminClient, url: str, tmp_path: Path, keys: list[str]
) -> None:
    log = tmp_path / "rw.log"
    # Errors that cannot fix themselves: one line naming the fix, at once, no traceback.
    for wrong, code, says in (
        ("127.0.0.1:8001", EXIT_USAGE, "write http://127.0.0.1:8001"),
        (url + "/v1", EXIT_FAILED, "without a path such as /v1"),
    ):
        proc = _reference_worker(wrong, log=log)
        await wait_until(lambda p=proc: p.poll() is not None, timeout=EXIT_WAIT, what="exit")
        text = log.read_text()
        assert proc.returncode == code, text
        assert says in text
        assert "Traceback" not in text

    # A second signal while draining stops the children at once and exits 4.
    proc = _reference_worker(url, log=log)
    try:
        await wait_until(
            lambda: _streams_on(admin, "rw", len(keys)), what="the reference worker runs all"
        )
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: _status(admin, "rw", "draining"), what="draining")
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: proc.poll() is not None, timeout=EXIT_WAIT, what="exit")
        assert proc.returncode == EXIT_STOPPED_NOW, log.read_text()
        assert await _status(admin, "rw", "left")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def a_fenced_worker_stops_on_a_signal(
    server: ServerProcess, programs, keys: list[str]
) -> None:
    program = programs(server.url, "fenced")
    await wait_until(lambda: program.running() == set(keys), what="all running")
    server.kill()  # no renewal possible: the worker fences itself
    await wait_until(lambda: program.running() == set(), what="self-fenced")
    program.signal(signal.SIGTERM)
    assert await program.exited() == 0, program.out.read_text()
    assert program.said("exited")


def _reference_worker(server: str, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "streamorch", "worker", "--name", "rw"),
                *("--server", server, "--exec", "sleep 1000", "--grace", "5", *extra),
            ],
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("STREAMORCH_")},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


async def _status(admin: AdminClient, name: str, status: str) -> bool:
    workers = {w["name"]: w for w in await admin.list_workers("all")}
    return name in workers and workers[name]["status"] == status


async def _streams_on(admin: AdminClient, name: str, count: int) -> bool:
    workers = {w["name"]: w for w in await admin.list_workers("all")}
    return name in workers and workers[name]["streams"] == count
