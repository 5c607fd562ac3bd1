"""A fleet of journaling worker processes (tests/support/fleet_worker.py) and what is done to them.

Every signal the harness sends is journaled in `harness.journal` next to the workers'
journals, on the same monotonic clock: `died` when a SIGKILLed process was reaped (what
it ran stopped by then), `freeze` / `thaw` around SIGSTOP / SIGCONT, `term` and `exit`.

    fleet = ProcessFleet(tmp_path / "journal", [server.url], capacity=50)
    fleet.start([f"w{i:02d}" for i in range(6)])   # all register at one instant
    fleet.kill("w00")
    records = fleet.records()
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.support import journal

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 10.0


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.name} ---\n" + "\n".join(text[-lines:])


class ProcessFleet:
    """Worker processes, each journaling to `directory`; `close()` kills what is left."""

    def __init__(
        self,
        directory: Path,
        servers: list[str],
        *,
        capacity: int,
        drain_timeout: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.servers = servers
        self.capacity = capacity
        self.drain_timeout = drain_timeout
        self.env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
        self.workers: dict[str, WorkerProcess] = {}
        self.harness = journal.Writer(self.directory, journal.HARNESS)

    # -- starting ------------------------------------------------------------------
    def spawn(self, names: list[str], servers: list[str] | None = None) -> list[WorkerProcess]:
        """Start processes that wait for `go()`; returns once every one is ready.

        `servers` (default: the fleet's) are the URLs each process tries in turn."""
        urls = ",".join(servers or self.servers)
        started = []
        for name in names:
            log = self.directory / f"{name}.log"
            with log.open("ab") as err:
                proc = subprocess.Popen(
                    [
                        *(sys.executable, "-m", "tests.support.fleet_worker"),
                        *("--server", urls, "--name", name),
                        *("--capacity", str(self.capacity), "--journal", str(self.directory)),
                        *("--drain-timeout", str(self.drain_timeout), "--wait-go"),
                    ],
                    cwd=ROOT,
                    env=self.env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                )
            worker = WorkerProcess(name, proc, log)
            self.workers[name] = worker
            started.append(worker)
        self._wait_ready(started)
        return started

    def _wait_ready(self, workers: list[WorkerProcess]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            for w in workers:
                assert w.proc.stdout is not None
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
            waiting = len(workers)
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{waiting} worker processes not ready in time")
                for key, _ in sel.select(timeout=left):
                    w = key.data
                    line = w.proc.stdout.readline()
                    if line.strip() != b"ready":
                        raise AssertionError(f"{w.name} did not start:\n{w.tail()}")
                    sel.unregister(key.fileobj)
                    waiting -= 1

    def go(self, workers: list[WorkerProcess]) -> float:
        """Let spawned processes register, all at once; returns the instant."""
        t = self.harness.write("go", ",".join(w.name for w in workers))
        for w in workers:
            assert w.proc.stdin is not None
            w.proc.stdin.write(b"go\n")
            w.proc.stdin.flush()
        return t

    def start(self, names: list[str]) -> float:
        return self.go(self.spawn(names))

    # -- faults --------------------------------------------------------------------
    def kill(self, name: str) -> float:
        """SIGKILL; returns when the process was reaped (journaled as `died`)."""
        w = self.workers[name]
        self.harness.write("kill", name)
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait(timeout=EXIT_TIMEOUT_S)
        return self.harness.write("died", name)

    def freeze(self, name: str) -> float:
        """SIGSTOP; journaled once the process is stopped, so the cut is never early."""
        proc = self.workers[name].proc
        proc.send_signal(signal.SIGSTOP)
        status = psutil.Process(proc.pid)
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while status.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.harness.write("freeze", name)

    def thaw(self, name: str) -> float:
        """SIGCONT; journaled before the signal, so every act of the process comes after."""
        t = self.harness.write("thaw", name)
        self.workers[name].proc.send_signal(signal.SIGCONT)
        return t

    def terminate(self, name: str) -> float:
        """SIGTERM: the worker drains and exits; see `wait_exit`."""
        t = self.harness.write("term", name)
        self.workers[name].proc.send_signal(signal.SIGTERM)
        return t

    def wait_exit(self, name: str, timeout: float) -> int | None:
        """The exit code, or None if the process is still running after `timeout`."""
        w = self.workers[name]
        try:
            code = w.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.harness.write("exit", name, why=str(code))
        return code

    # -- reading -------------------------------------------------------------------
    @property
    def live(self) -> list[str]:
        return [n for n, w in self.workers.items() if w.alive]

    def records(self) -> list[journal.Record]:
        return journal.load(self.directory)

    def logs(self, names: list[str] | None = None, lines: int = 30) -> str:
        chosen = names if names is not None else list(self.workers)
        return "\n".join(self.workers[n].tail(lines) for n in chosen)

    def close(self) -> None:
        for name, w in self.workers.items():
            if w.alive:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGCONT)
                    w.proc.send_signal(signal.SIGKILL)
                w.proc.wait(timeout=EXIT_TIMEOUT_S)
                self.harness.write("died", name)
            for pipe in (w.proc.stdin, w.proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self.harness.close()
