"""`start-orchestrator.sh` end to end: start, serve, stop, restart, and each way it fails.

Every test runs the real script as a subprocess (it `exec`s into `streamorch
serve`, so the script's pid is the server's) against its own data directory,
with embedded PostgreSQL and Valkey unless the test points a service elsewhere.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
from pathlib import Path

import anyio
import psycopg
import pytest

from streamorch.backing import waits
from streamorch.backing.embedded import DataDir, EmbeddedPostgres
from streamorch.backing.endpoints import PostgresTarget, postgres_target
from streamorch.config import load_settings
from streamorch.domain.probes import Probe
from tests.e2e.harness import Launcher, free_port, processes_mentioning, wait_until_gone
from tests.support.waiting import read_by_peer, wait_until, wait_until_sync

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PHASES = ("services", "postgres", "redis", "migrate", "verify")
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def cluster_id(data_dir: Path) -> str:
    """The cluster's identity, read as the application user would."""
    target = postgres_target(load_settings({"STREAMORCH_DATA_DIR": str(data_dir)}))
    with psycopg.connect(target.conninfo, connect_timeout=5) as conn:
        row = conn.execute("SELECT cluster_id FROM cluster").fetchone()
    assert row is not None
    return str(row[0])


def assert_phases_logged(stderr: str) -> None:
    for name in PHASES:
        pattern = rf"^{TIMESTAMP} INFO +\S+: phase {name}: done in \d+ ms"
        assert re.search(pattern, stderr, re.MULTILINE), f"no line for phase {name}:\n{stderr}"
    ready = rf"^{TIMESTAMP} INFO +\S+: orchestrator ready on http://127\.0\.0\.1:\d+"
    assert re.search(ready, stderr, re.MULTILINE), f"no 'ready' line:\n{stderr}"


def assert_nothing_left(data_dir: Path) -> None:
    left = wait_until_gone(data_dir)
    assert not left, f"processes still running for {data_dir}: {left}"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_start_stop_and_restart_keep_the_data(
    launcher: Launcher, data_dir: Path, stop_signal: signal.Signals
) -> None:
    first = launcher.start()
    first.wait_ready()
    health = first.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "healthy"
    identity = cluster_id(data_dir)
    assert processes_mentioning(data_dir), "embedded servers should run under the data dir"

    assert first.stop(stop_signal) == 0
    stderr = first.stderr()
    assert_phases_logged(stderr)
    assert f"stop requested ({stop_signal.name})" in stderr
    assert_nothing_left(data_dir)

    second = launcher.start()
    second.wait_ready()
    assert cluster_id(data_dir) == identity
    assert "initialising embedded PostgreSQL cluster" not in second.stderr()
    assert second.stop(stop_signal) == 0
    assert_phases_logged(second.stderr())
    assert_nothing_left(data_dir)


def test_external_postgres_never_answering_fails_in_phase_postgres(
    launcher: Launcher, data_dir: Path
) -> None:
    closed = free_port()
    code, stderr = launcher.run_to_exit(
        DATABASE_URL=f"postgresql://u:p@127.0.0.1:{closed}/db", POSTGRES_STARTUP_TIMEOUT="2"
    )
    assert code == 12, stderr
    failed = re.search(
        rf"^{TIMESTAMP} ERROR +\S+: phase postgres failed after \d+ ms: (.*)$\n^ +→ try: (.+)$",
        stderr,
        re.MULTILINE,
    )
    assert failed, stderr
    cause, fix = failed.groups()
    assert f"nothing is listening on 127.0.0.1:{closed}" in cause
    assert "DATABASE_URL" in fix
    # The embedded Valkey started for this run is stopped again.
    assert_nothing_left(data_dir)


@pytest.mark.anyio
async def test_wait_for_postgres_succeeds_when_the_server_comes_up_late(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data = DataDir(data_dir)
    data.ensure()
    port = free_port()
    data.record_port("postgres", port)  # the server will start on exactly this port
    pg = EmbeddedPostgres(data, durable=False)
    target = PostgresTarget(
        pg.superuser_conninfo(port), "127.0.0.1", port, "postgres", "postgres", embedded=True
    )
    result: list[Probe] = []

    async def wait() -> None:
        result.append(await waits.wait_for_postgres(target, timeout=30))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            # The wait has failed once (nothing listens yet) before the server starts.
            await wait_until(
                lambda: any(getattr(r, "action", "") == "wait_retry" for r in caplog.records),
                timeout=30,
                what="a first failed attempt",
            )
            assert not result, "nothing listens yet: the wait cannot have succeeded"
            endpoint = await anyio.to_thread.run_sync(pg.start)
            assert endpoint.port == port
    finally:
        await anyio.to_thread.run_sync(pg.stop)

    assert result[0].ok
    assert result[0].attempts > 1


def test_invalid_configuration_lists_every_problem_with_a_fix(
    launcher: Launcher, data_dir: Path
) -> None:
    code, stderr = launcher.run_to_exit(POSTGRES_STARTUP_TIMEOUT="abc", LOG_FORMAT="xml")
    assert code == 10, stderr
    assert "configuration invalid (2 problem(s))" in stderr
    for variable in ("POSTGRES_STARTUP_TIMEOUT='abc'", "LOG_FORMAT='xml'"):
        problem = re.search(
            rf"^  - {re.escape(variable)}: expected .+$\n^ +fix: (.+)$", stderr, re.MULTILINE
        )
        assert problem, f"{variable} not reported with a fix:\n{stderr}"
        assert problem.group(1).startswith("correct ")
    assert not data_dir.exists(), "nothing may start on an invalid configuration"


def test_port_in_use_fails_in_phase_serve_and_starts_nothing(
    launcher: Launcher, data_dir: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, stderr = launcher.run_to_exit(port=port)
    assert code == 17, stderr
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    assert f"stop the process using port {port}" in stderr
    assert_nothing_left(data_dir)
    assert not EmbeddedPostgres(DataDir(data_dir)).status().running


def test_redis_down_but_not_required_serves_degraded(launcher: Launcher, data_dir: Path) -> None:
    closed = free_port()
    run = launcher.start(REDIS_URL=f"redis://127.0.0.1:{closed}/0", REDIS_STARTUP_TIMEOUT="1")
    ready = run.wait_ready()
    assert ready.json()["services"]["postgresql"]["status"] == "ready"
    health = run.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "healthy"
    assert body["degraded"] == ["redis"]
    assert [e["service"] for e in body["errors"]] == ["redis"]
    assert "continuing without Redis" in run.stderr()

    assert run.stop(signal.SIGTERM) == 0
    assert_nothing_left(data_dir)


def test_whole_start_up_is_bounded_by_app_startup_timeout(
    launcher: Launcher, data_dir: Path
) -> None:
    """APP_STARTUP_TIMEOUT caps the sequence even when a phase would wait longer."""
    closed = free_port()
    code, stderr = launcher.run_to_exit(
        DATABASE_URL=f"postgresql://u:p@127.0.0.1:{closed}/db",
        POSTGRES_STARTUP_TIMEOUT="600",
        APP_STARTUP_TIMEOUT="2",
    )
    assert code == 18, stderr
    assert "start-up took longer than APP_STARTUP_TIMEOUT=2s" in stderr
    assert_nothing_left(data_dir)


def test_redis_required_and_down_fails_in_phase_redis(launcher: Launcher, data_dir: Path) -> None:
    closed = free_port()
    code, stderr = launcher.run_to_exit(
        REDIS_URL=f"redis://127.0.0.1:{closed}/0", REDIS_STARTUP_TIMEOUT="1", REDIS_REQUIRED="true"
    )
    assert code == 13, stderr
    assert "phase redis failed" in stderr
    assert f"nothing is listening on 127.0.0.1:{closed}" in stderr
    assert_nothing_left(data_dir)


def test_sigterm_answers_long_polls_in_flight(launcher: Launcher, data_dir: Path) -> None:
    """Shutdown does not wait out a worker's 30 s long-poll: it is answered at once."""
    import json

    import httpx

    run = launcher.start()
    run.wait_ready()
    worker = httpx.post(run.base_url + "/v1/workers/register", json={"name": "w"}).json()
    path = f"/v1/workers/{worker['worker_id']}/assignments"
    version = httpx.get(run.base_url + path).json()["version"]
    host, port = run.base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as poll:
        poll.sendall(
            f"GET {path}?version={version}&wait=30 HTTP/1.1\r\nHost: {host}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        # The server has read the long-poll (it is waiting there now) before the SIGTERM.
        wait_until_sync(lambda: read_by_peer(poll), timeout=30, what="the server reads it")
        assert run.stop() == 0, run.stderr()
        answer = b""
        while chunk := poll.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200", head
    assert json.loads(body)["version"] == version
    assert_nothing_left(data_dir)
