"""The Redis client the API process opens (its PostgreSQL pool is store/database.py)."""

from __future__ import annotations

import redis.asyncio as aioredis

REDIS_SOCKET_TIMEOUT_S = 2.0


def connect_redis(url: str) -> aioredis.Redis:
    """A client (it connects on first use) whose calls give up after two seconds."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        health_check_interval=10,
    )
