"""Waiting for a condition with a deadline: `wait_until` (async) and `wait_until_sync`.

The deadline is a bound that fails the test, never a speed check: every wait polls a
condition, so a loaded machine only makes the test slower.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable


def wait_until_sync(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = ""
) -> None:
    """Blocking: poll `predicate` until it is true; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what or predicate!r}")
        time.sleep(interval)


Predicate = Callable[[], bool | Awaitable[bool]]


async def wait_until(
    predicate: Predicate, *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> None:
    """Poll `predicate` until it holds; fail after `timeout` s (a bound, not a speed check)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what or predicate!r}")
        await asyncio.sleep(interval)


def read_by_peer(sock: socket.socket) -> bool:
    """True once the other end of the loopback TCP connection `sock` has read every byte
    sent to it (its receive queue in /proc/net/tcp is empty; Linux only).

    A barrier for "the server has the request": the bytes a client sent are taken in by
    the server process, not just queued by the kernel.
    """
    client_port = sock.getsockname()[1]
    server_port = sock.getpeername()[1]
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                local, remote, queues = fields[1], fields[2], fields[4]
                if (
                    int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port
                ):
                    return int(queues.split(":")[1], 16) == 0
    return False
