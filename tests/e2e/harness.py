"""Run `start-orchestrator.sh` as a subprocess and watch what it leaves behind.

The embedded servers daemonise into their own sessions, so they are not the
script's children: "nothing left running" is checked by scanning every process
for one that belongs to the data directory — its command line names the
directory (the postmaster: `postgres -D <dir>/postgres`) or its working
directory lies inside it (PostgreSQL backends, Valkey, which renames itself).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from streamorch.backing.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "start-orchestrator.sh"

# Variables that would point the orchestrator elsewhere than the test wants.
_STRIPPED_NAMES = {
    "DATABASE_URL",
    "REDIS_URL",
    "STREAMORCH_DATA_DIR",
    "STREAMORCH_KEEP_SERVICES",
    "APP_STARTUP_TIMEOUT",
}
_STRIPPED_PREFIXES = ("DB_", "POSTGRES_", "REDIS_", "ORCHESTRATOR_", "LOG_")

# Bounds for every wait; generous so a slow CI machine fails only on real hangs.
READY_TIMEOUT = 120.0
EXIT_TIMEOUT = 60.0
POLL = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    """The process environment without any service configuration, plus `overrides`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _STRIPPED_NAMES and not name.startswith(_STRIPPED_PREFIXES)
    }
    env.update(overrides)
    return env


def _belongs_to(info: dict, path: str) -> bool:
    cmdline = " ".join(info.get("cmdline") or ())
    cwd = info.get("cwd") or ""
    return path in cmdline or cwd == path or cwd.startswith(path + os.sep)


def processes_mentioning(path: Path) -> list[psutil.Process]:
    """Live processes whose command line or working directory is inside `path`."""
    needle = str(path.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"], ad_value=None):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if _belongs_to(proc.info, needle):
            found.append(proc)
    return found


def wait_until_gone(path: Path, timeout: float = 5.0) -> list[str]:
    """Poll until no process mentions `path`; returns descriptions of survivors."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_mentioning(path)
        if not left or time.monotonic() > deadline:
            return [_describe(p) for p in left]
        time.sleep(POLL)


def kill_processes_mentioning(path: Path) -> None:
    for proc in processes_mentioning(path):
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline()).strip()} (cwd {proc.cwd()})"
    except psutil.Error:
        return str(proc.pid)


@dataclass
class Run:
    """One `start-orchestrator.sh` process (after `exec`, the server itself)."""

    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    stdout_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=5.0)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> httpx.Response:
        """Poll GET /ready until it answers 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(
                    f"start-orchestrator.sh exited with {code} before /ready; stderr:\n"
                    + self.stderr()
                )
            try:
                response = self.get("/ready")
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return response
                last = f"{response.status_code} {response.text[:300]}"
            time.sleep(POLL)
        raise AssertionError(
            f"/ready not 200 within {timeout:g}s (last: {last}); stderr:\n{self.stderr()}"
        )

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process did not exit within {timeout:g}s; stderr:\n{self.stderr()}"
            ) from None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = EXIT_TIMEOUT) -> int:
        self.proc.send_signal(sig)
        return self.wait(timeout)


@dataclass
class Launcher:
    """Starts the script against one data directory; kills whatever is left at the end."""

    data_dir: Path
    runs: list[Run] = field(default_factory=list)

    @property
    def workspace(self) -> Path:
        """The traversable temporary directory holding the data directory and the logs."""
        return self.data_dir.parent

    def start(self, port: int | None = None, **env: str) -> Run:
        port = port or free_port()
        n = len(self.runs) + 1
        stdout_path = self.workspace / f"run{n}.stdout"
        stderr_path = self.workspace / f"run{n}.stderr"
        environ = clean_env(
            STREAMORCH_DATA_DIR=str(self.data_dir), ORCHESTRATOR_PORT=str(port), **env
        )
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                [str(SCRIPT)],
                cwd=ROOT,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        run = Run(proc, port, stderr_path, stdout_path)
        self.runs.append(run)
        return run

    def run_to_exit(
        self, port: int | None = None, timeout: float = EXIT_TIMEOUT, **env: str
    ) -> tuple[int, str]:
        """Start the script, expect it to exit on its own; returns (exit code, stderr)."""
        run = self.start(port, **env)
        code = run.wait(timeout)
        return code, run.stderr()

    def close(self) -> None:
        """Stop what a failed test left running: the server, then the embedded servers."""
        for run in self.runs:
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGTERM)
                try:
                    run.proc.wait(timeout=EXIT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    run.proc.kill()
                    run.proc.wait(timeout=EXIT_TIMEOUT)
        data = DataDir(self.data_dir)
        for server in (EmbeddedValkey(data), EmbeddedPostgres(data)):
            with contextlib.suppress(Exception):
                if server.status().running:
                    server.stop()
        kill_processes_mentioning(self.workspace)
