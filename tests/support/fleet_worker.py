"""One SDK worker process that journals every start and stop (tests/support/journal.py).

    python -m tests.support.fleet_worker --server URL --name w001 --capacity 100 \\
        --journal DIR [--wait-go]

A stream "runs" from `on_assign` to `on_revoke`; each is one journal record with the
fencing token and `time.monotonic()`. The stop's `why` says what the SDK was doing:
`fence` (self-fencing: the lease was not renewed in time), `drain` (shutting down) or
`revoke` (the orchestrator moved it).

With `--wait-go` the process imports everything, prints `ready` and waits for a line on
stdin before it registers, so that a harness can start a whole fleet at one instant.
SIGTERM drains and exits (the SDK's `install_signal_handlers`). The SDK's own log lines
go to stderr with a monotonic time stamp, so they line up with the journals.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from streamorch.client import Assignment, AsyncWorker
from tests.support.journal import Writer


class _Monotonic(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = {
            k: v
            for k, v in record.__dict__.items()
            if k in ("action", "code", "left", "incarnation", "worker_id")
        }
        return f"{time.monotonic():.6f} {record.levelname} {record.getMessage()} {extra or ''}"


async def work(args: argparse.Namespace, journal: Writer) -> None:
    worker: AsyncWorker

    def on_assign(a: Assignment) -> None:
        journal.write("start", a.stream, a.token)

    def on_revoke(a: Assignment) -> None:
        why = "fence" if worker.fenced else "drain" if worker.draining else "revoke"
        journal.write("stop", a.stream, a.token, why)

    worker = AsyncWorker(
        args.server.split(","),
        name=args.name,
        capacity=args.capacity,
        on_assign=on_assign,
        on_revoke=on_revoke,
        drain_timeout=args.drain_timeout,
    )
    worker.install_signal_handlers()
    await worker.run()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="base URL(s), comma-separated")
    parser.add_argument("--name", required=True)
    parser.add_argument("--capacity", type=int, required=True)
    parser.add_argument("--journal", type=Path, required=True, help="journal directory")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--wait-go", action="store_true")
    args = parser.parse_args()

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Monotonic())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("streamorch.client").setLevel(logging.INFO)

    journal = Writer(args.journal, args.name)
    if args.wait_go:
        print("ready", flush=True)
        sys.stdin.readline()
    try:
        asyncio.run(work(args, journal))
    finally:
        journal.write("exit")
        journal.close()


if __name__ == "__main__":
    main()
