"""A real `streamorch serve` process on this test's database, for the SDK tests.

The server runs as a subprocess so tests can take it away (SIGKILL) and bring it back
on the same port, as an orchestrator restart or an outage looks to a worker.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST_ENGINE, PostgresServer
from tests.e2e.harness import clean_env, free_port
from tests.support.cluster import spawn_server, wait_server_ready

READY_TIMEOUT = 60.0


class ServerProcess:
    """`python -m streamorch serve` on a fixed port; `kill()` and `start()` at will."""

    def __init__(self, workdir: Path, database_url: str, redis_url: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.env = clean_env(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            STREAMORCH_DATA_DIR=str(workdir / "data"),
            ORCHESTRATOR_HOST="127.0.0.1",
            ORCHESTRATOR_PORT=str(self.port),
            LOG_LEVEL="INFO",
            **FAST_ENGINE,
        )
        for name in ("STREAMORCH_ADMIN_TOKEN", "STREAMORCH_WORKER_TOKEN"):
            self.env.pop(name, None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"server{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.proc = spawn_server(self.env, self.log)
        try:
            wait_server_ready(self.proc, self.url, describe=self.tail, timeout=READY_TIMEOUT)
        except AssertionError:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def server(
    tmp_path: Path, postgres_server: PostgresServer, database: str, redis_url: str
) -> Iterator[ServerProcess]:
    """A running server with fast engine timings (heartbeat 0.3 s, lease 1.5 s)."""
    process = ServerProcess(tmp_path, postgres_server.url(database), redis_url)
    process.start()
    try:
        yield process
    finally:
        process.stop()
