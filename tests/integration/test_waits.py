"""Waiting for PostgreSQL and Redis: success, backoff, timeouts and clear causes."""

from __future__ import annotations

import socket

import pytest

from streamorch.backing import endpoints, waits
from streamorch.domain.errors import ServiceUnavailable

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_wait_for_postgres_answers(settings):
    result = await waits.wait_for_postgres(endpoints.postgres_target(settings), timeout=10)
    assert result.ok
    assert result.version is not None
    assert result.attempts == 1


async def test_wait_for_postgres_gives_up_with_cause(make_settings):
    port = closed_port()
    settings = make_settings(DATABASE_URL=f"postgresql://u:p@127.0.0.1:{port}/db")
    with pytest.raises(ServiceUnavailable) as caught:
        await waits.wait_for_postgres(endpoints.postgres_target(settings), timeout=1.5)
    assert caught.value.problem.code == "postgres.unreachable"
    assert f"127.0.0.1:{port}" in caught.value.problem.message
    assert "gave up after 1.5s" in caught.value.problem.message
    assert caught.value.attempts > 1  # it retried with backoff


async def test_wrong_password_fails_at_once(make_settings, postgres_server, database):
    url = postgres_server.url(database)
    bad = url.replace(url.split("//")[1].split("@")[0], "postgres:wrong")
    settings = make_settings(DATABASE_URL=bad)
    with pytest.raises(ServiceUnavailable) as caught:
        await waits.wait_for_postgres(endpoints.postgres_target(settings), timeout=30)
    assert caught.value.problem.code == "postgres.auth_failed"
    assert caught.value.attempts == 1  # waiting cannot fix a wrong password
    assert "wrong" not in str(caught.value)


async def test_missing_database_is_named(make_settings, postgres_server):
    settings = make_settings(DATABASE_URL=postgres_server.url("no_such_db"))
    with pytest.raises(ServiceUnavailable) as caught:
        await waits.wait_for_postgres(endpoints.postgres_target(settings), timeout=5)
    assert caught.value.problem.code == "postgres.database_missing"
    assert "'no_such_db'" in caught.value.problem.message


async def test_wait_for_redis_answers(settings):
    result = await waits.wait_for_redis(endpoints.redis_target(settings), timeout=10)
    assert result.ok
    assert result.version


async def test_redis_without_password_is_explained(make_settings, redis_url):
    without = "redis://" + redis_url.split("@", 1)[1]
    settings = make_settings(REDIS_URL=without)
    with pytest.raises(ServiceUnavailable) as caught:
        await waits.wait_for_redis(endpoints.redis_target(settings), timeout=5)
    assert caught.value.problem.code == "redis.auth_required"
    assert "REDIS_PASSWORD" in caught.value.problem.fix


async def test_redis_not_running(make_settings):
    settings = make_settings(REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    with pytest.raises(ServiceUnavailable) as caught:
        await waits.wait_for_redis(endpoints.redis_target(settings), timeout=1)
    assert caught.value.problem.code == "redis.unreachable"
