"""I11: one orchestrator per data directory. A second start on it refuses before doing
anything and harms nothing; a start after a crash takes over what the dead one started."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamorch.backing.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey
from tests.e2e.harness import ROOT, Launcher, clean_env, wait_until_gone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_second_start_refuses_and_the_first_keeps_serving(
    launcher: Launcher, data_dir: Path
) -> None:
    first = launcher.start()
    first.wait_ready()
    pid = first.proc.pid  # the script execs into the server: same pid

    # Same port, then another port: the data directory is what makes it refuse.
    for port in (first.port, None):
        code, stderr = launcher.run_to_exit(port=port)
        assert code == 17, stderr
        assert f"already running: pid {pid}, :{first.port}" in stderr
        assert "kill -TERM" in stderr
        assert "embedded services stopped" not in stderr
        assert "phase services" not in stderr  # refused before doing anything

    # Nor does `services stop` take the first one's databases away.
    stop = subprocess.run(
        [sys.executable, "-m", "streamorch", "services", "stop"],
        cwd=ROOT,
        env=clean_env(STREAMORCH_DATA_DIR=str(data_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stop.returncode == 1, stop.stderr
    assert f"an orchestrator is running on these servers (pid {pid}" in stop.stderr

    health = first.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "healthy"
    data = DataDir(data_dir)
    assert EmbeddedPostgres(data).status().running
    assert EmbeddedValkey(data).status().running

    # A crash leaves the servers running; the next start adopts them as its own, and
    # stops them when it is stopped.
    first.proc.send_signal(signal.SIGKILL)
    first.wait()
    again = launcher.start()
    again.wait_ready()
    assert "already running: pid" not in again.stderr()
    assert again.stop(signal.SIGTERM) == 0
    assert not wait_until_gone(data_dir), "the adopted servers should be stopped"
