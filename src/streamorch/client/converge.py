"""`Converger`: the only caller of a worker's `on_assign` / `on_revoke`.

It is handed the newest desired set (`set_target`) and brings what runs to it: first it
stops what is absent from the set, then it starts what is new. A set that arrives while
it stops streams replaces the old one before anything is started. What is starting or
stopping still counts as running in `reported()`, and `version` names the newest set
that has been applied completely, so a heartbeat never acknowledges a stop too early.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from streamorch.client.models import Assignment

log = logging.getLogger(__name__)

Callback = Callable[[Assignment], Awaitable[None] | None]


class Converger:
    """What runs, what should run, and the loop that closes the gap (see the module).

    Args:
        on_assign: Starts a stream; an exception counts as "not started".
        on_revoke: Stops a stream; an exception counts as stopped.
        on_stopped: Called after a round of stops (the worker reports them at once).
    """

    def __init__(
        self, on_assign: Callback, on_revoke: Callback, *, on_stopped: Callable[[], None]
    ) -> None:
        self.running: dict[str, Assignment] = {}
        self.starting: set[str] = set()
        self.stopping: set[str] = set()
        self.target: dict[str, Assignment] = {}
        self.version = -1  # the version the running set reflects (applied)
        self.callback_errors = 0
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_stopped = on_stopped
        self._target_version = -1
        self._seq = 0
        self._dirty = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def reported(self) -> list[str]:
        """What a heartbeat reports as running: started, starting or stopping."""
        return sorted(set(self.running) | self.starting | self.stopping)

    def set_target(self, target: dict[str, Assignment], version: int) -> None:
        """Make `target` (at `version`) the set to converge to."""
        self.target = dict(target)
        self._target_version = version
        self._seq += 1
        self._idle.clear()
        self._dirty.set()

    async def converge_to(self, target: dict[str, Assignment], version: int) -> None:
        """`set_target`, then wait until it was applied (`run()` must be running)."""
        self.set_target(target, version)
        await self._idle.wait()

    async def run(self) -> None:
        """Apply each new target; runs until cancelled."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            seq, target, version = self._seq, self.target, self._target_version
            stops = [a for key, a in self.running.items() if key not in target]
            for key, assignment in target.items():
                if key in self.running:
                    self.running[key] = assignment  # a new token for a kept stream
            if stops:
                self.stopping.update(a.stream for a in stops)
                await asyncio.gather(*(self._call_revoke(a) for a in stops))
                self._on_stopped()  # moves finish on the stop report
            if seq != self._seq:
                continue  # a newer set arrived meanwhile: start from it
            starts = [a for key, a in target.items() if key not in self.running]
            if starts:
                self.starting.update(a.stream for a in starts)
                await asyncio.gather(*(self._call_assign(a) for a in starts))
            if seq == self._seq:
                self.version = version
                self._idle.set()

    async def _call_assign(self, assignment: Assignment) -> None:
        try:
            await _call(self._on_assign, assignment)
        except Exception:
            self.callback_errors += 1
            log.exception(
                "on_assign failed; retried with the next answer",
                extra={"action": "assign_failed", "stream": assignment.stream},
            )
        else:
            self.running[assignment.stream] = assignment
            log.info(
                "started %s",
                assignment.stream,
                extra={"action": "started", "stream": assignment.stream, "token": assignment.token},
            )
        finally:
            self.starting.discard(assignment.stream)

    async def _call_revoke(self, assignment: Assignment) -> None:
        try:
            await _call(self._on_revoke, assignment)
        except Exception:
            self.callback_errors += 1
            log.exception(
                "on_revoke failed; the stream is taken as stopped",
                extra={"action": "revoke_failed", "stream": assignment.stream},
            )
        else:
            log.info(
                "stopped %s",
                assignment.stream,
                extra={"action": "stopped", "stream": assignment.stream, "token": assignment.token},
            )
        finally:
            self.running.pop(assignment.stream, None)
            self.stopping.discard(assignment.stream)


async def _call(callback: Callback, assignment: Assignment) -> None:
    result = callback(assignment)
    if inspect.isawaitable(result):
        await result
