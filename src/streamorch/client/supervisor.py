"""The reference worker's process supervisor: one command per assigned stream.

`Supervisor.on_assign` starts `command` with `{url}`, `{key}` and `{token}` replaced in
each argument (the command is split with shlex first and never passes through a shell,
so a URL cannot inject anything), and restarts it with capped exponential backoff
whenever it exits. `on_revoke` sends SIGTERM to the child's process group and SIGKILL
after `grace` seconds.

No child may outlive the worker, or a failover would leave two copies of a stream
running. Each child starts in its own session (so a terminal's Ctrl-C reaches only the
worker, which then drains) and asks the kernel to SIGKILL it when its parent dies
(`PR_SET_PDEATHSIG`, Linux), also when the worker itself is SIGKILLed. The death signal
follows the *thread* that forked, so children must be started from the event loop's
thread, which `AsyncWorker` does. Grandchildren are not covered: let the command `exec`
its program rather than fork it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Mapping

from streamorch.client.models import Assignment

log = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"\{(url|key|token)\}")
PR_SET_PDEATHSIG = 1
STABLE_AFTER_S = 10.0  # a child that ran this long starts the backoff from the beginning


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()  # loaded before any fork: the child must not dlopen


def _die_with_parent(parent: int) -> Callable[[], None]:
    """The child's first act after fork: SIGKILL me when my parent dies."""

    def setup() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def command_for(template: list[str], stream: Assignment) -> list[str]:
    """`template` with the placeholders of each argument replaced."""
    values = {"url": stream.url, "key": stream.stream, "token": str(stream.token)}
    return [PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in template]


class StreamProcess:
    """One stream's child process, restarted until `stop()`."""

    def __init__(
        self,
        stream: Assignment,
        argv: list[str],
        *,
        env: Mapping[str, str],
        grace: float,
        max_backoff: float,
    ) -> None:
        self.stream = stream
        self.argv = argv
        self.env = dict(env)
        self.grace = grace
        self.max_backoff = max_backoff
        self.restarts = 0
        self.process: asyncio.subprocess.Process | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.returncode is None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"stream-{self.stream.stream}")

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; returns once the child is gone."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _supervise(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *self.argv,
                    env=self.env,
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(os.getpid()),
                )
            except OSError as exc:
                log.error(
                    "cannot start the command: %s",
                    exc,
                    extra={"action": "child_start_failed", "stream": self.stream.stream},
                )
            else:
                if await self._wait_or_stop(self.process):
                    return
                log.warning(
                    "child exited with %s; restarting",
                    self.process.returncode,
                    extra={"action": "child_exited", "stream": self.stream.stream},
                )
            if time.monotonic() - started >= STABLE_AFTER_S:
                failures = 0
            failures += 1
            self.restarts += 1
            delay = min(self.max_backoff, 0.5 * 2 ** (failures - 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _wait_or_stop(self, process: asyncio.subprocess.Process) -> bool:
        """Wait for the child to exit (False) or for `stop()`, then end it (True)."""
        exited = asyncio.create_task(process.wait())
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not self._stop.is_set():
            return False
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), self.grace)
            except TimeoutError:
                log.warning(
                    "child ignored SIGTERM for %.1f s: killing it",
                    self.grace,
                    extra={"action": "child_killed", "stream": self.stream.stream},
                )
                _signal_group(process.pid, signal.SIGKILL)
        await exited
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the child leads its own session: reach its helpers too
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Supervisor:
    """`on_assign` / `on_revoke` / `metrics` for an `AsyncWorker` that runs a command."""

    def __init__(
        self,
        command: str,
        *,
        grace: float = 10.0,
        max_backoff: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.template = shlex.split(command)
        if not self.template:
            raise ValueError("the command is empty")
        self.grace = grace
        self.max_backoff = max_backoff
        self.env = dict(os.environ if env is None else env)
        self.processes: dict[str, StreamProcess] = {}
        # When true (the worker is self-fencing), revokes allow only `urgent_grace`.
        self.urgent: Callable[[], bool] = lambda: False
        self.urgent_grace = 0.5
        self._restarts_before = 0  # of children already stopped

    async def on_assign(self, stream: Assignment) -> None:
        env = {
            **self.env,
            "STREAMORCH_STREAM_KEY": stream.stream,
            "STREAMORCH_STREAM_URL": stream.url,
            "STREAMORCH_STREAM_TOKEN": str(stream.token),
        }
        child = StreamProcess(
            stream,
            command_for(self.template, stream),
            env=env,
            grace=self.grace,
            max_backoff=self.max_backoff,
        )
        self.processes[stream.stream] = child
        child.start()

    async def on_revoke(self, stream: Assignment) -> None:
        child = self.processes.pop(stream.stream, None)
        if child is not None:
            if self.urgent():
                child.grace = min(child.grace, self.urgent_grace)
            await child.stop()
            self._restarts_before += child.restarts

    async def stop_all(self) -> None:
        children = list(self.processes.values())
        self.processes.clear()
        await asyncio.gather(*(c.stop() for c in children))

    def metrics(self) -> dict[str, object]:
        """Sent with each heartbeat: restarts in total and of the streams running now."""
        current = {k: c.restarts for k, c in self.processes.items() if c.restarts}
        return {
            "children": sum(1 for c in self.processes.values() if c.pid is not None),
            "restarts": self._restarts_before + sum(current.values()),
            "restarts_by_stream": dict(sorted(current.items())[:100]),
        }
