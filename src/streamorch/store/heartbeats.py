"""Heartbeats coalesced into one statement per batch: the hot path of the engine.

A fleet heartbeats continuously, and one statement per heartbeat spends most of
its cost on the round trip, the statement's overhead and a commit (a WAL flush)
each. Concurrent heartbeats are therefore written together: a batch is whatever
arrived while earlier batches were in flight. There is no timer, so a lone
heartbeat is written at once and only a busy server forms larger batches.

A worker is never in two batches at once, nor twice in one: its heartbeats are
written in the order they arrived.

One worker's beat can never fail another's: the API refuses what the statement
cannot store, and should a beat still make the statement fail, the batch is split
in halves until the failing beats are alone, so only their senders get the error.
A lost connection or a full pool is everyone's problem and fails the whole batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from streamorch.store.database import HEARTBEAT_CONNECTIONS, DatabaseManager
from streamorch.store.queries import sql
from streamorch.store.retry import retry_conflicts

log = logging.getLogger(__name__)

# Enough to amortise a statement; small enough that one batch stays a short transaction.
MAX_BATCH = 128
# Batches written at the same time, each on a connection of the heartbeat pool.
MAX_IN_FLIGHT = HEARTBEAT_CONNECTIONS


@dataclass(frozen=True)
class Beat:
    worker_id: uuid.UUID
    incarnation: int
    running: list[str]
    draining: bool
    metrics: dict[str, Any]
    acked_version: int | None
    ttl: float
    # The digest of the secret the beat came with; None: the caller authenticated the
    # worker another way (the original protocol has no secrets).
    secret_hash: bytes | None = None


@dataclass
class _Pending:
    beat: Beat
    answer: asyncio.Future[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def batch_params(beats: list[Beat]) -> dict[str, Any]:
    """The `heartbeats` statement's parameters for these beats."""
    return {
        "ids": [b.worker_id for b in beats],
        "incarnations": [b.incarnation for b in beats],
        "runnings": [",".join(b.running) for b in beats],
        "acked_versions": [b.acked_version for b in beats],
        "metrics": [json.dumps(b.metrics, allow_nan=False) for b in beats],
        "draining": [b.draining for b in beats],
        "ttls": [b.ttl for b in beats],
        "secret_hashes": [b.secret_hash for b in beats],
    }


class HeartbeatBatcher:
    def __init__(self, db: DatabaseManager) -> None:
        self.db = db
        self._queue: deque[_Pending] = deque()
        self._writing: set[uuid.UUID] = set()  # workers in a batch in flight
        self._in_flight: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.beats = 0

    def pending_workers(self) -> list[uuid.UUID]:
        """Workers with a heartbeat received but not written yet: they are alive."""
        queued = {p.beat.worker_id for p in self._queue if not p.answer.done()}
        return sorted(queued | self._writing)

    async def submit(self, beat: Beat) -> dict[str, Any] | None:
        """The worker's row after this beat; None if no such worker exists."""
        pending = _Pending(beat)
        self._queue.append(pending)
        self._start_batches()
        return await pending.answer

    def _start_batches(self) -> None:
        while self._queue and len(self._in_flight) < MAX_IN_FLIGHT:
            batch = self._take()
            if not batch:
                return  # what is queued waits for its worker's batch in flight
            task = asyncio.create_task(self._write(batch), name="heartbeat-batch")
            self._in_flight.add(task)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        taken: set[uuid.UUID] = set()
        kept: deque[_Pending] = deque()
        while self._queue and len(batch) < MAX_BATCH:
            pending = self._queue.popleft()
            worker = pending.beat.worker_id
            if pending.answer.done():  # its request went away
                continue
            if worker in taken or worker in self._writing:
                kept.append(pending)
                continue
            taken.add(worker)
            batch.append(pending)
        kept.extend(self._queue)
        self._queue = kept
        self._writing |= taken
        return batch

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            await self._write_isolated(batch)
        except Exception as exc:
            for pending in batch:
                if not pending.answer.done():
                    pending.answer.set_exception(exc)
        except BaseException:  # cancelled (shutdown): so are the heartbeats waiting on it
            for pending in batch:
                pending.answer.cancel()
            raise
        finally:
            self._writing -= {p.beat.worker_id for p in batch}
            self._in_flight.discard(asyncio.current_task())
            self._start_batches()

    async def _write_isolated(self, batch: list[_Pending]) -> None:
        """Write the batch; answer each beat with its row or, alone, with its own error."""
        try:
            rows = await self._execute([p.beat for p in batch])
        except (psycopg.OperationalError, PoolTimeout):
            raise  # the database, not a beat: every beat in the batch fails
        except Exception as exc:
            if len(batch) == 1:
                log.warning(
                    "heartbeat refused by the database: %s",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    extra={"action": "heartbeat_refused", "worker": str(batch[0].beat.worker_id)},
                )
                if not batch[0].answer.done():
                    batch[0].answer.set_exception(exc)
                return
            half = len(batch) // 2
            await self._write_isolated(batch[:half])
            await self._write_isolated(batch[half:])
            return
        self.batches += 1
        self.beats += len(batch)
        for pending in batch:
            if not pending.answer.done():
                pending.answer.set_result(rows.get(pending.beat.worker_id))

    @retry_conflicts
    async def _execute(self, beats: list[Beat]) -> dict[uuid.UUID, dict[str, Any]]:
        async with self.db.heartbeat_connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql("heartbeats"), batch_params(beats))
            return {row["id"]: row for row in await cur.fetchall()}
