"""SERVER_PROCESSES > 1: several API server processes on one listening socket.

`streamorch serve` runs the start-up once (embedded services, waits, migrations), binds the
port, and then starts N children that all accept on that one socket; the kernel spreads the
connections among them. Each child is a whole server: its own connection pool, notifier and
reconciler loop. Reconcile passes stay serialised across every process and replica by the
PostgreSQL advisory lock, exactly as between replicas on different hosts.

The parent serves nothing. It restarts a child that dies (backing off when one keeps dying
right away), and on SIGTERM stops the children before it stops any embedded service, so no
API process outlives its database. A child whose parent disappears (SIGKILL) stops itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from streamorch.config import Settings
from streamorch.domain.errors import StartupError
from streamorch.domain.problems import Problem
from streamorch.ops.startup import ExitCode

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the parent looks for dead children
STOP_TIMEOUT_S = 15.0  # uvicorn's graceful shutdown (10 s) plus the teardown
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 30.0  # a child that ran this long resets the backoff


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


class ServerProcesses:
    """The children of one `serve`; `run()` supervises them, `stop()` ends them."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.children: dict[int, _Child] = {}
        self.restarts = 0
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, index: int) -> tuple[_Child, int]:
        """Start child `index`; returns it and the read end of its ready pipe."""
        ready_r, ready_w = os.pipe()
        try:
            proc = subprocess.Popen(  # the environment (the settings) is inherited
                [
                    sys.executable,
                    "-m",
                    "streamorch.server.processes",
                    str(self.sock.fileno()),
                    str(ready_w),
                    str(index),
                ],
                pass_fds=(self.sock.fileno(), ready_w),
            )
        finally:
            os.close(ready_w)
        return _Child(index, proc), ready_r

    async def _await_ready(self, child: _Child, ready_r: int) -> bool:
        """True once the child serves; False when it exited first."""
        try:
            return await asyncio.to_thread(os.read, ready_r, 1) == b"1"
        finally:
            os.close(ready_r)

    async def run(self, on_ready: Callable[[], None] = lambda: None) -> None:
        """Start every child, then keep them running until cancelled."""
        count = self.settings.server_processes
        spawned = [self._spawn(index) for index in range(count)]
        for child, _ in spawned:
            self.children[child.index] = child
        ready = await asyncio.gather(*(self._await_ready(c, r) for c, r in spawned))
        if not all(ready):
            failed = [
                c.index for c, ok in zip(self.children.values(), ready, strict=True) if not ok
            ]
            raise StartupError(
                "serve",
                int(ExitCode.SERVE),
                Problem(
                    "api.process_failed",
                    f"server process(es) {failed} of {count} exited before serving",
                    "see the error logged above by the process",
                ),
            )
        log.info(
            "%d server processes serving (pids %s)",
            count,
            ", ".join(str(c.proc.pid) for c in self.children.values()),
            extra={"action": "processes_ready", "processes": count},
        )
        on_ready()
        backoff: dict[int, float] = {}
        while True:
            await asyncio.sleep(POLL_S)
            for index, child in list(self.children.items()):
                code = child.proc.poll()
                if code is None or self._stopping:
                    continue
                lived = time.monotonic() - child.started
                delay = 0.0 if lived > HEALTHY_AFTER_S else backoff.get(index, 0.5)
                backoff[index] = min(BACKOFF_MAX_S, max(1.0, delay * 2))
                log.error(
                    "server process %d (pid %d) exited with %d after %.1f s; restarting in %.1f s",
                    index,
                    child.proc.pid,
                    code,
                    lived,
                    delay,
                    extra={"action": "process_exited", "exit_code": code, "server_process": index},
                )
                await asyncio.sleep(delay)
                replacement, ready_r = self._spawn(index)
                self.children[index] = replacement
                self.restarts += 1
                # The others serve meanwhile: announce this one when it is up, not wait.
                task = asyncio.create_task(self._announce(replacement, ready_r))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _announce(self, child: _Child, ready_r: int) -> None:
        if await self._await_ready(child, ready_r):
            log.info(
                "server process %d restarted (pid %d)",
                child.index,
                child.proc.pid,
                extra={"action": "process_restarted", "server_process": child.index},
            )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every child, wait for them, SIGKILL what is left. Blocks; never raises."""
        self._stopping = True
        # A second SIGTERM must not interrupt this half-way and leave children behind.
        previous = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self._stop(timeout)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, timeout: float) -> None:
        live = [c.proc for c in self.children.values() if c.proc.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "server process %d did not stop within %.0f s; killing it",
                    proc.pid,
                    timeout,
                    extra={"action": "process_killed"},
                )
                proc.kill()
                proc.wait()
        if live:
            log.info("server processes stopped", extra={"action": "processes_stopped"})


# ---------------------------------------------------------------- the child


def _child(fd: int, ready_fd: int, index: int) -> int:
    import uvicorn

    from streamorch.api.app import create_app
    from streamorch.config import load_settings
    from streamorch.logs import configure_logging
    from streamorch.server.loop import loop_factory, release_long_polls

    settings = load_settings()  # the parent validated the same environment
    configure_logging(settings.log_level, settings.log_format)
    server: uvicorn.Server | None = None
    stop_early = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Before uvicorn serves: make it stop as soon as it starts. After it served: uvicorn
        # raises the signal it handled once more, and the shutdown was graceful already.
        nonlocal stop_early
        stop_early = True
        if server is not None:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    parent = os.getppid()
    sock = socket.socket(fileno=fd)
    app = create_app(settings)
    loop: asyncio.AbstractEventLoop  # set by main(), before uvicorn calls handle_exit

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            loop.call_soon_threadsafe(release_long_polls, app)

    server = _Server(
        uvicorn.Config(
            app, lifespan="on", log_config=None, access_log=False, timeout_graceful_shutdown=10
        )
    )
    server.should_exit = stop_early

    async def watch() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        with contextlib.suppress(OSError):  # the parent may have stopped listening
            os.write(ready_fd, b"1")
        os.close(ready_fd)
        while os.getppid() == parent:  # orphaned (the parent was killed): stop serving
            await asyncio.sleep(1.0)
        log.warning("the supervising process is gone; stopping", extra={"action": "orphaned"})
        server.should_exit = True
        release_long_polls(app)

    async def main() -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        watcher = asyncio.create_task(watch())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main())
    return 0 if server.started else int(ExitCode.SERVE)


if __name__ == "__main__":
    fd, ready, number = (int(arg) for arg in sys.argv[1:4])
    sys.exit(_child(fd, ready, number))
