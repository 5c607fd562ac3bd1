"""The Redis client the API process opens, and its probes (the pool is store/database.py)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from streamorch.domain.errors import StoreError

REDIS_SOCKET_TIMEOUT_S = 2.0


def connect_redis(url: str) -> aioredis.Redis:
    """A client (it connects on first use) whose calls give up after two seconds."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        health_check_interval=10,
    )


RedisClient = aioredis.Redis
REDIS_PROBE_KEY = "streamorch:health:probe"


@dataclass(frozen=True)
class RedisCheck:
    """What the deep check of `/health` saw: PING's latency, INFO, and a SET read back."""

    latency_ms: float
    info: dict[str, Any]
    read_back: bool
    operations_ms: float


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def check_redis(client: RedisClient, timeout: float) -> RedisCheck:
    """PING, INFO, and a SET with a TTL read back; Redis errors leave as StoreError."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
            latency = _ms(started)
            info = await client.info()
            ops = time.perf_counter()
            value = f"{os.getpid()}:{time.time()}"
            await client.set(REDIS_PROBE_KEY, value, ex=10)
            read = await client.get(REDIS_PROBE_KEY)
    except aioredis.RedisError as exc:
        raise StoreError(str(exc) or type(exc).__name__) from exc
    read_back = (read.decode() if isinstance(read, bytes) else read) == value
    return RedisCheck(latency, info, read_back, _ms(ops))


async def ping_redis(client: RedisClient, timeout: float) -> float:
    """PING within `timeout`; the latency in ms. Redis errors leave as StoreError."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
    except aioredis.RedisError as exc:
        raise StoreError(str(exc) or type(exc).__name__) from exc
    return _ms(started)
