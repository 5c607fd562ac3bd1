"""SERVER_PROCESSES=2: one `serve` supervising two API processes on one port.

Proves: both processes answer on the one port; a process killed with SIGKILL is replaced
while the other keeps answering; SIGTERM stops the children and then the embedded services
(which only the supervising process started), leaving nothing running and exit 0.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.harness import Launcher, Run, wait_until_gone

pytestmark = pytest.mark.slow

BOUND = 60.0  # seconds; a bound for a loaded machine, not a speed goal


def children(run: Run) -> set[int]:
    """The server processes `serve` supervises (start-orchestrator.sh execs `serve`)."""
    return {
        child.pid
        for child in psutil.Process(run.proc.pid).children()
        if "streamorch.server.processes" in " ".join(child.cmdline())
    }


def answering_pids(run: Run, tries: int) -> set[int]:
    """The pids that answered `tries` fresh connections to /health (each must answer 200)."""
    seen: set[int] = set()
    for _ in range(tries):
        response = run.get("/health")
        assert response.status_code == 200, response.text
        seen.add(response.json()["details"]["pid"])
    return seen


def test_two_processes_serve_one_port_and_survive_a_kill(
    launcher: Launcher, data_dir: Path
) -> None:
    run = launcher.start(SERVER_PROCESSES="2")
    run.wait_ready()
    first = children(run)
    assert len(first) == 2, run.stderr()
    assert run.proc.pid not in first

    # Both children accept on the shared socket (the kernel picks one per connection).
    deadline = time.monotonic() + BOUND
    seen: set[int] = set()
    while seen != first:
        seen |= answering_pids(run, 20)
        assert seen <= first, f"answered by {seen - first}, not a child of serve"
        assert time.monotonic() < deadline, f"only {seen} of {first} ever answered"

    victim = min(first)
    process = psutil.Process(victim)
    process.kill()
    process.wait(BOUND)
    # The survivor answers every request meanwhile; a replacement joins it.
    deadline = time.monotonic() + BOUND
    while True:
        now = children(run)
        if len(now) == 2 and victim not in now:
            break
        ready = run.get("/ready")
        assert ready.status_code == 200, ready.text
        assert time.monotonic() < deadline, f"no replacement for {victim}:\n{run.stderr()}"
    replacement = (now - first).pop()
    deadline = time.monotonic() + BOUND
    while replacement not in answering_pids(run, 20):
        assert time.monotonic() < deadline, f"{replacement} never answered:\n{run.stderr()}"
    assert "process_exited" in run.stderr()

    assert run.stop(signal.SIGTERM) == 0, run.stderr()
    left = wait_until_gone(data_dir.parent)
    assert left == [], f"left running after SIGTERM: {left}"
    for pid in now:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    stderr = run.stderr()
    # The children stopped before the embedded services did.
    assert stderr.index("processes_stopped") < stderr.index("embedded_stopped"), stderr
