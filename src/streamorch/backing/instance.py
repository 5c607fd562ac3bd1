"""One orchestrator per data directory (I11).

`serve` holds an exclusive `flock` on `<data_dir>/orchestrator.pid` for as long as it
runs, and writes its pid, address and the embedded servers it started into that file.
A second start on the same data directory finds the lock taken and refuses before it
does anything — it starts nothing and stops nothing. The kernel drops the lock when the
holder exits, however it exits (SIGKILL included), so a stale file never blocks a start;
the next instance reads from it which servers the dead one had started, and takes them
over, while servers started by someone else (`streamorch services start`) stay theirs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from streamorch.domain.errors import StreamorchError

FILE_NAME = "orchestrator.pid"


@dataclass(frozen=True)
class Holder:
    """What the running instance wrote about itself."""

    pid: int | None
    host: str | None
    port: int | None
    started: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f":{self.port}" if self.port else "unknown port"


class AlreadyRunning(StreamorchError):
    """Another live process serves from this data directory."""

    def __init__(self, holder: Holder, path: Path) -> None:
        self.holder = holder
        self.path = path
        super().__init__(f"already running: pid {holder.pid or '?'}, {holder.address}")


class InstanceLock:
    """The data directory's lock; `acquire()` once, `release()` (or exit) to free it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir).expanduser().resolve() / FILE_NAME
        self._handle: IO[str] | None = None
        self._previous = Holder(None, None, None)
        self._record: dict[str, object] = {}

    def acquire(self, *, host: str, port: int) -> None:
        """Take the lock, or raise `AlreadyRunning` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise AlreadyRunning(self.read(), self.path) from None
        self._handle = handle
        self._previous = self.read()
        # Until start-up says otherwise, what the dead holder started is ours to stop.
        started = self._previous.started
        self._record = {"pid": os.getpid(), "host": host, "port": port, "started": started}
        self._write()

    def holder(self) -> Holder | None:
        """The live instance holding the lock, or None (takes nothing)."""
        if self._handle is not None:
            return self.read()
        try:
            handle = open(self.path)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return self.read()
            fcntl.flock(handle, fcntl.LOCK_UN)
        return None

    def inherited(self) -> set[str]:
        """Embedded servers that the previous, dead holder had started itself."""
        return set(self._previous.started)

    def record_started(self, names: set[str]) -> None:
        """Note the embedded servers this process owns (the next holder may adopt them)."""
        self._record["started"] = sorted(names)
        self._write()

    def release(self) -> None:
        """Empty the file and drop the lock. The file stays: unlinking it would let two
        later starts lock two different files at once."""
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self._handle.seek(0)
            self._handle.truncate()
        self._handle.close()  # closing drops the flock
        self._handle = None

    def read(self) -> Holder:
        try:
            values = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            values = {}
        started = values.get("started") or []
        return Holder(
            values.get("pid"),
            values.get("host"),
            values.get("port"),
            [str(s) for s in started] if isinstance(started, list) else [],
        )

    def _write(self) -> None:
        assert self._handle is not None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(json.dumps(self._record))
        self._handle.flush()
