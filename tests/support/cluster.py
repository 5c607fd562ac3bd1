"""PostgreSQL, Valkey and `streamorch serve` processes that a test may kill and restart.

`Services` owns an embedded PostgreSQL and an embedded Valkey in its own directory (not
the session's: restarting those would disturb other tests), so a test can restart either
on the same port. `Servers` runs server processes against one database.
`spawn_server` and `wait_server_ready` are the one way tests and benchmarks
(bench/_servers.py) start a `streamorch serve` process and wait for its /ready.

    services = Services(root); services.start()
    servers = Servers(workdir, services.create_database(), services.redis_url, ENGINE)
    s1 = servers.start()
    services.restart_postgres()
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from streamorch.backing.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey
from tests.e2e.harness import ROOT, clean_env, free_port

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class Services:
    """Embedded PostgreSQL + Valkey under `root`; `stop()` ends both."""

    def __init__(self, root: Path) -> None:
        self.data = DataDir(root)
        self.pg = EmbeddedPostgres(self.data, durable=False)
        self.valkey = EmbeddedValkey(self.data)
        self.pg_port = 0
        self.valkey_port = 0

    def start(self) -> None:
        self.pg_port = self.pg.start(timeout=60).port or 0
        self.valkey_port = self.valkey.start().port or 0

    def stop(self) -> None:
        for service in (self.valkey, self.pg):
            with contextlib.suppress(Exception):
                service.stop()

    def restart_postgres(self) -> None:
        """A fast shutdown (every connection dropped) and a start on the same port."""
        self.pg.stop()
        port = self.pg.start(timeout=60).port
        assert port == self.pg_port, f"PostgreSQL came back on {port}, not {self.pg_port}"

    def restart_redis(self) -> None:
        self.valkey.stop()
        port = self.valkey.start().port
        assert port == self.valkey_port, f"Valkey came back on {port}, not {self.valkey_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.valkey.password}@127.0.0.1:{self.valkey_port}/0"

    def database_url(self, name: str) -> str:
        password = self.pg.superuser_password
        return f"postgresql://postgres:{password}@127.0.0.1:{self.pg_port}/{name}"

    def create_database(self) -> str:
        """A fresh, migrated database; returns its URL."""
        from streamorch.store import migrations

        name = f"chaos_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.pg.superuser_conninfo(self.pg_port), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

        async def migrate() -> None:
            info = self.pg.superuser_conninfo(self.pg_port, name)
            async with await psycopg.AsyncConnection.connect(info, autocommit=True) as conn:
                await migrations.migrate(conn)

        asyncio.run(migrate())
        return self.database_url(name)


def spawn_server(
    env: dict[str, str],
    log: Path,
    *,
    python_args: Sequence[str] = (),
    program: Sequence[str] = ("-m", "streamorch"),
) -> subprocess.Popen[bytes]:
    """Start `python -m streamorch serve` (or `python <program> serve`) with `env` (the
    whole environment), output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *python_args, *program, "serve"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_server_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    *,
    describe: Callable[[], str],
    timeout: float = READY_TIMEOUT_S,
    error: type[Exception] = AssertionError,
) -> None:
    """Poll `url`/ready until it answers 200; `error` (with `describe()`) if the process
    exits first or `timeout` seconds pass (a bound, not a speed check)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                raise error(f"server exited with {proc.returncode}:\n{describe()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(url + "/ready").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise error(f"server not ready within {timeout:g} s:\n{describe()}")
            time.sleep(0.05)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not ended within STOP_TIMEOUT_S."""
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.name} ({self.url}) ---\n" + "\n".join(text[-lines:])


class Servers:
    """`python -m streamorch serve` processes on one database; `close()` stops them."""

    def __init__(
        self, workdir: Path, database_url: str, redis_url: str, engine: dict[str, str]
    ) -> None:
        self.workdir = workdir
        self.env = clean_env(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            STREAMORCH_DATA_DIR=str(workdir / "data"),
            ORCHESTRATOR_HOST="127.0.0.1",
            LOG_LEVEL="INFO",
            **engine,
        )
        for name in ("STREAMORCH_ADMIN_TOKEN", "STREAMORCH_WORKER_TOKEN"):
            self.env.pop(name, None)
        self.servers: list[Server] = []

    def start(self) -> Server:
        name = f"s{len(self.servers) + 1}"
        port = free_port()
        log = self.workdir / f"{name}.log"
        proc = spawn_server({**self.env, "ORCHESTRATOR_PORT": str(port)}, log)
        server = Server(name, proc, port, log)
        self.servers.append(server)
        return server

    def wait_ready(self, *servers: Server) -> None:
        for server in servers:
            wait_server_ready(server.proc, server.url, describe=server.tail)

    def kill(self, server: Server) -> None:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=STOP_TIMEOUT_S)

    @property
    def running(self) -> list[Server]:
        return [s for s in self.servers if s.running]

    def client(self) -> httpx.Client:
        """A client on the first running server."""
        return httpx.Client(base_url=self.running[0].url, timeout=30)

    def events(self, stream: str) -> list[dict]:
        """The events log of one stream (from the first running server)."""
        with self.client() as client:
            response = client.get("/v1/events", params={"stream": stream, "limit": 1000})
            response.raise_for_status()
            return list(response.json()["items"])

    def close(self) -> None:
        for server in self.running:
            server.proc.send_signal(signal.SIGTERM)
        for server in self.servers:
            try:
                server.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait(timeout=STOP_TIMEOUT_S)

    def logs(self, lines: int = 40) -> str:
        return "\n".join(s.tail(lines) for s in self.servers)
