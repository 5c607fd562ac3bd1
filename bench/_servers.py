"""Throw-away services for the engine benchmarks (bench/heartbeat.py, failover.py, …).

`Stack` starts an embedded PostgreSQL and an embedded Valkey in a temporary, traversable
directory, creates one database, applies the migrations, and starts
`python -m streamorch serve` processes pointed at both (DATABASE_URL / REDIS_URL, a free
port on 127.0.0.1). Everything listens on loopback only. `close()` (also on SIGTERM,
Ctrl-C or an exception, via the context manager) stops the servers, then Valkey, then
PostgreSQL, kills whatever is left in the directory and removes it.

    with Stack() as stack:
        server = stack.serve(RECONCILE_INTERVAL="1")
        httpx.get(server.url + "/v1/status")
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the process helpers are shared with the end-to-end tests
from tests.e2e.harness import clean_env, free_port, kill_processes_mentioning  # noqa: E402
from tests.support.cluster import spawn_server, wait_server_ready  # noqa: E402

from streamorch.backing.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey  # noqa: E402

DATABASE = "streamorch_bench"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class BenchError(RuntimeError):
    pass


@dataclass
class Server:
    """One `python -m streamorch serve` process."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        wait_server_ready(self.proc, self.url, describe=self.log, timeout=timeout, error=BenchError)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def cpu_seconds(self) -> float:
        """User + system CPU the server used so far, its live server processes included
        (SERVER_PROCESSES > 1)."""
        root = psutil.Process(self.proc.pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20


class Stack:
    """Embedded PostgreSQL + Valkey in a temporary directory, and server processes."""

    def __init__(self, *, durable: bool = True, valkey: bool = True) -> None:
        self.workspace = Path(tempfile.mkdtemp(prefix="streamorch-bench-"))
        self.workspace.chmod(0o755)  # under root the embedded PostgreSQL runs as another user
        self.data = DataDir(self.workspace / "data")
        self.durable = durable
        self.pg = EmbeddedPostgres(self.data, durable=durable)
        self.valkey = EmbeddedValkey(self.data)
        self.with_valkey = valkey
        self.pg_port: int | None = None
        self.valkey_port: int | None = None
        self.servers: list[Server] = []
        self._previous: dict[int, object] = {}

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> Stack:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, _exit_on_signal)
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def start(self) -> None:
        self.pg_port = self.pg.start(timeout=60).port
        if self.with_valkey:
            self.valkey_port = self.valkey.start().port
        with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        import asyncio

        from streamorch.store import migrations

        async def migrate() -> None:
            conn = await psycopg.AsyncConnection.connect(self.conninfo(), autocommit=True)
            async with conn:
                await migrations.migrate(conn)

        asyncio.run(migrate())

    def close(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        for service in (self.valkey, self.pg):
            with contextlib.suppress(Exception):
                if service.status().running:
                    service.stop()
        kill_processes_mentioning(self.workspace)
        shutil.rmtree(self.workspace, ignore_errors=True)

    # -- addresses -----------------------------------------------------------
    def admin_conninfo(self) -> str:
        assert self.pg_port is not None
        return self.pg.superuser_conninfo(self.pg_port)

    def conninfo(self) -> str:
        assert self.pg_port is not None
        return self.pg.superuser_conninfo(self.pg_port, DATABASE)

    @property
    def database_url(self) -> str:
        return (
            f"postgresql://postgres:{self.pg.superuser_password}@127.0.0.1:{self.pg_port}/"
            f"{DATABASE}"
        )

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.valkey.password}@127.0.0.1:{self.valkey_port}/0"

    # -- servers -------------------------------------------------------------
    def serve(self, *, python_args: tuple[str, ...] = (), **env: str) -> Server:
        """Start `python -m streamorch serve` and wait for /ready; `env` adds settings."""
        port = free_port()
        n = len(self.servers) + 1
        log_path = self.workspace / f"server{n}.log"
        assert self.with_valkey, "the server needs Valkey: Stack(valkey=True)"
        environ = clean_env(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            ORCHESTRATOR_PORT=str(port),
            ORCHESTRATOR_HOST="127.0.0.1",
            STREAMORCH_DATA_DIR=str(self.workspace / f"server{n}"),
            **env,
        )
        proc = spawn_server(environ, log_path, python_args=python_args)
        server = Server(proc, port, log_path)
        self.servers.append(server)
        server.wait_ready()
        return server

    def postgres_cpu_seconds(self) -> float:
        """User + system CPU of the postmaster and its live children (backends)."""
        pid = self.pg.status().pid
        if pid is None:
            return 0.0
        total = 0.0
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
        return total


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def machine() -> dict[str, str | int | None]:
    import platform

    model = None
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            None,
        )
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values), max(1, math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def run_bench(
    measure: Callable[[], dict[str, Any]],
    report: Callable[[dict[str, Any]], None],
    *,
    as_json: bool,
) -> int:
    """Run a benchmark; `report` its result for people, or print it as JSON.

    With `as_json`, progress goes to stderr so that stdout is the JSON document alone.
    Returns the exit code: 1 when the benchmark failed.
    """
    progress = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    try:
        with progress:
            result = measure()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        report(result)
    return 0
