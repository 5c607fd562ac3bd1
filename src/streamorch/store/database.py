"""DatabaseManager: the orchestrator's PostgreSQL connection pool.

Every resource is released only if it was acquired: a pool that never opened is
never closed, a connection that failed half-way is closed by its context
manager, and `close_connection_safely` can be called any number of times,
whatever happened before.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
from psycopg_pool import AsyncConnectionPool
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from streamorch.backing import diagnose
from streamorch.backing.endpoints import PostgresTarget
from streamorch.backing.waits import probe_postgres
from streamorch.config import Settings
from streamorch.domain.errors import ServiceError, StoreError
from streamorch.domain.probes import Probe
from streamorch.store import migrations

log = logging.getLogger(__name__)


# A connection returned to the pool less than this long ago is handed out again
# without a test round trip: under load (heartbeats) that check would be a third of a
# heartbeat's database cost, and a connection that just worked is almost surely
# alive. One idle for longer, which a restart or an idle timeout may have cut, is
# tested first.
CHECK_AFTER_IDLE_S = 1.0
RECONNECT_GIVE_UP_S = 2.0
_returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection, float] = (
    weakref.WeakKeyDictionary()
)


# Connections of their own for the batched heartbeat statement (store/heartbeats.py
# writes at most this many batches at once).
HEARTBEAT_CONNECTIONS = 2


async def _generic_plans(conn: psycopg.AsyncConnection) -> None:
    # Left to choose, PostgreSQL re-plans the batched heartbeat for every call (each
    # custom plan looks cheaper than the generic one for its array sizes), and planning
    # costs more than running it: with one generic plan, PostgreSQL CPU per heartbeat
    # -30 % (bench/heartbeat.py). Only on the heartbeat connections: for any statement
    # with `= ANY(<array parameter>)`, a generic plan searches the array row by row
    # instead of hashing it (a catalog replace of 100,000 streams: 6 s → 195 s).
    await conn.execute("SET plan_cache_mode = force_generic_plan")


async def _note_returned(conn: psycopg.AsyncConnection) -> None:
    _returned_at[conn] = time.monotonic()


async def _check_if_idle(conn: psycopg.AsyncConnection) -> None:
    returned = _returned_at.get(conn)
    if returned is not None and time.monotonic() - returned < CHECK_AFTER_IDLE_S:
        return
    await AsyncConnectionPool.check_connection(conn)


def _retryable(exc: BaseException) -> bool:
    return not (isinstance(exc, ServiceError) and diagnose.is_permanent(exc.problem))


def _log_retry(state: RetryCallState) -> None:
    # before_sleep runs after a failed attempt: the outcome is set.
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "database connection attempt %d failed; retrying",
        state.attempt_number,
        extra={"action": "db_connect_retry", "error": str(error)},
    )


class DatabaseManager:
    def __init__(self, target: PostgresTarget, settings: Settings) -> None:
        self.target = target
        self.settings = settings
        self._pool: AsyncConnectionPool | None = None
        self._heartbeat_pool: AsyncConnectionPool | None = None

    @property
    def pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise StoreError("the database pool is not open; call connect_with_retry() first")
        return self._pool

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def connect_with_retry(self) -> None:
        """Open the pools, retrying DB_MAX_RETRIES times with backoff and jitter."""
        if self._pool is not None:
            return
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.db_max_retries + 1),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.5),
            retry=retry_if_exception(_retryable),
            reraise=True,
            before_sleep=_log_retry,
        )
        async for attempt in retrying:
            with attempt:
                self._pool = await self._open_pool()
        try:
            self._heartbeat_pool = await self._new_pool(
                "streamorch-heartbeats", 1, HEARTBEAT_CONNECTIONS, configure=_generic_plans
            )
        except BaseException:
            await self.close_connection_safely()
            raise

    async def _open_pool(self) -> AsyncConnectionPool:
        # One direct connection first: it fails with the real cause (a pool only
        # says it timed out), which is what the operator needs to read.
        probe = await probe_postgres(self.target, self.settings.db_timeout)
        if not probe.ok:
            assert probe.problem is not None
            raise ServiceError("postgresql", probe.problem)
        return await self._new_pool(
            "streamorch", self.settings.db_pool_min_size, self.settings.db_pool_max_size
        )

    async def _new_pool(
        self,
        name: str,
        min_size: int,
        max_size: int,
        configure: Callable[[psycopg.AsyncConnection], Awaitable[None]] | None = None,
    ) -> AsyncConnectionPool:
        pool = AsyncConnectionPool(
            self.target.conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=self.settings.db_timeout,
            kwargs={"autocommit": True, "connect_timeout": max(2, round(self.settings.db_timeout))},
            open=False,
            name=name,
            configure=configure,
            # A connection the server dropped (restart, failover, idle kill) is
            # replaced at checkout instead of failing the request that got it.
            check=_check_if_idle,
            reset=_note_returned,
            # The pool retries a lost connection after 1, 2, 4, 8 … s, so after a long
            # outage it would come back up to that long after PostgreSQL did. Giving up
            # early instead lets the next request that finds the pool empty open a
            # connection at once (the pool grows on demand), so recovery follows
            # PostgreSQL's return within one health probe.
            reconnect_timeout=RECONNECT_GIVE_UP_S,
        )
        try:
            await pool.open(wait=True, timeout=self.settings.db_timeout)
        except BaseException:
            await pool.close()
            raise
        return pool

    @asynccontextmanager
    async def connection(self, *, prepared: bool = True) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection. `prepared=False` for work that runs now and then with
        arrays of any size (bulk changes, reconcile passes): psycopg then never prepares
        its statements, so PostgreSQL plans each with its actual values. Once prepared,
        PostgreSQL may settle on a generic plan, and for `key = ANY(<100,000 keys>)`
        that plan searches the array row by row instead of hashing it."""
        async with self.pool.connection() as conn:
            if prepared:
                yield conn
                return
            threshold, conn.prepare_threshold = conn.prepare_threshold, None
            try:
                yield conn
            finally:
                conn.prepare_threshold = threshold

    @asynccontextmanager
    async def heartbeat_connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection of the heartbeat pool (generic plans; see `_generic_plans`)."""
        if self._heartbeat_pool is None:
            raise StoreError("the database pool is not open; call connect_with_retry() first")
        async with self._heartbeat_pool.connection() as conn:
            yield conn

    async def reconnect_now(self) -> None:
        """PostgreSQL is back: open connections now instead of when the pools' reconnect
        back-off (1, 2, 4 … s) next fires, so a request or pass waiting for a connection
        goes on at once (`check()` starts a new connection when the pool can grow)."""
        for pool in (self._pool, self._heartbeat_pool):
            if pool is not None:
                try:
                    await pool.check()
                except psycopg.Error as exc:  # back down already: the back-off goes on
                    log.info("reconnecting after an outage failed: %s", exc)

    async def verify_connection(self, timeout: float = 2.0) -> Probe:
        """`SELECT 1` through the pool, bounded by `timeout`."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout), self.pool.connection(timeout=timeout) as conn:
                cur = await conn.execute("SELECT current_setting('server_version')")
                row = await cur.fetchone()
        except (psycopg.Error, StoreError, OSError, TimeoutError) as exc:
            return Probe.failed("postgresql", diagnose.postgres_problem(exc, self.target))
        latency = round((time.perf_counter() - started) * 1000, 2)
        return Probe.passed("postgresql", latency, version=row[0] if row else None)

    def pool_stats(self) -> dict[str, int]:
        """Connections in the pool now: size, idle (available) and requests waiting."""
        if self._pool is None:
            return {}
        stats = self._pool.get_stats()
        return {k: stats.get(k, 0) for k in ("pool_size", "pool_available", "requests_waiting")}

    async def ensure_schema(self) -> list[migrations.Migration]:
        """Apply pending migrations (safe to run from several replicas at once)."""
        async with self.connection() as conn:
            return await migrations.migrate(conn, lock_timeout_s=self.settings.app_startup_timeout)

    async def schema_version(self) -> int:
        async with self.connection() as conn:
            return await migrations.current_version(conn)

    async def close_connection_safely(self) -> None:
        pools = [self._heartbeat_pool, self._pool]
        self._heartbeat_pool = self._pool = None
        for pool in pools:
            if pool is None:
                continue
            try:
                await pool.close(timeout=5.0)
            except Exception:
                log.exception(
                    "closing the database pool failed", extra={"action": "db_close_failed"}
                )

    async def __aenter__(self) -> DatabaseManager:
        await self.connect_with_retry()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_connection_safely()
