"""SIGTERM and SIGINT for a worker: on the event loop while it runs, ignored after."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable


class SignalHandlers:
    """`install(callback)` on the running loop; `retire()` leaves them ignored."""

    def __init__(self) -> None:
        self._signals: list[signal.Signals] = []

    def install(self, callback: Callable[[], None]) -> None:
        """SIGTERM and SIGINT call `callback` (main thread, running loop)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, callback)
            self._signals.append(sig)

    def restore(self) -> None:
        """Give SIGTERM and SIGINT their default behaviour back."""
        self.retire()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def retire(self) -> None:
        """Take the handlers off the loop and ignore the signals (`SIG_IGN`) from now on."""
        # Removed from the loop first: closing the loop would otherwise reset them to
        # the defaults, and a late second SIGTERM would kill the process with 143.
        signals, self._signals = self._signals, []
        if not signals:
            return
        with contextlib.suppress(RuntimeError):  # no running loop any more
            loop = asyncio.get_running_loop()
            for sig in signals:
                loop.remove_signal_handler(sig)
        for sig in signals:
            # SIG_IGN, not a Python function: the interpreter resets those to the
            # defaults while it shuts down, which is exactly when a late signal arrives.
            signal.signal(sig, signal.SIG_IGN)
