"""Probe and wait for PostgreSQL and Redis.

`probe_*` make one bounded attempt and say what they found; `wait_for_*` retry
probes with exponential backoff and jitter until the service answers or the
timeout runs out. A problem that waiting cannot fix (wrong password, missing
database) ends the wait at once with that problem.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import psycopg
import redis.asyncio as aioredis
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_result,
    stop_after_delay,
    wait_exponential_jitter,
)

from streamorch.backing import diagnose
from streamorch.backing.endpoints import PostgresTarget, RedisTarget
from streamorch.domain.errors import ServiceUnavailable
from streamorch.domain.probes import Probe
from streamorch.domain.problems import Problem

log = logging.getLogger(__name__)


async def probe_postgres(target: PostgresTarget, timeout: float = 5.0) -> Probe:
    """Connect and run `SELECT 1`: accepting connections is not enough."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            conn = await psycopg.AsyncConnection.connect(
                target.conninfo, connect_timeout=max(2, round(timeout)), autocommit=True
            )
            async with conn:
                cur = await conn.execute("SELECT 1, current_setting('server_version')")
                row = await cur.fetchone()
    except (psycopg.Error, OSError, TimeoutError) as exc:
        return Probe.failed("postgresql", diagnose.postgres_problem(exc, target))
    latency = (time.perf_counter() - started) * 1000
    assert row is not None
    assert row[0] == 1
    return Probe.passed("postgresql", round(latency, 2), version=str(row[1]))


async def probe_redis(target: RedisTarget, timeout: float = 5.0) -> Probe:
    """Connect and `PING`."""
    started = time.perf_counter()
    client = aioredis.Redis.from_url(
        target.url, socket_connect_timeout=timeout, socket_timeout=timeout
    )
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
            info = await client.info("server")
    except (aioredis.RedisError, OSError, TimeoutError) as exc:
        return Probe.failed("redis", diagnose.redis_problem(exc, target))
    finally:
        await client.aclose()
    latency = (time.perf_counter() - started) * 1000
    version = str(info.get("valkey_version") or info.get("redis_version") or "unknown")
    return Probe.passed("redis", round(latency, 2), version=version)


async def wait_for_postgres(target: PostgresTarget, timeout: float) -> Probe:
    return await _wait("postgresql", lambda t: probe_postgres(target, t), timeout)


async def wait_for_redis(target: RedisTarget, timeout: float) -> Probe:
    return await _wait("redis", lambda t: probe_redis(target, t), timeout)


async def _wait(service: str, probe: Callable[[float], Awaitable[Probe]], timeout: float) -> Probe:
    started = time.monotonic()
    attempts = 0
    last: Probe | None = None

    async def attempt() -> Probe:
        nonlocal attempts, last
        attempts += 1
        remaining = max(0.5, timeout - (time.monotonic() - started))
        last = await probe(min(5.0, remaining))
        if not last.ok and last.problem is not None:
            log.info(
                "%s not ready yet (attempt %d): %s",
                service,
                attempts,
                last.problem.message,
                extra={"action": "wait_retry", "service": service, "code": last.problem.code},
            )
        return last

    def keep_trying(result: Probe) -> bool:
        return not result.ok and not (result.problem and diagnose.is_permanent(result.problem))

    retrying = AsyncRetrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.2),
        retry=retry_if_result(keep_trying),
    )
    try:
        result: Probe | None = await retrying(attempt)
    except RetryError:
        result = last
    assert result is not None
    result = replace(result, attempts=attempts)
    if result.ok:
        return result
    assert result.problem is not None
    problem = result.problem
    if not diagnose.is_permanent(problem):
        problem = Problem(
            problem.code,
            f"{problem.message} (gave up after {timeout:g}s, {attempts} attempts)",
            problem.fix,
            problem.context,
        )
    raise ServiceUnavailable(
        service, problem, attempts=attempts, waited_s=time.monotonic() - started
    )
