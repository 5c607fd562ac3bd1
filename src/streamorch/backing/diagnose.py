"""Turn driver exceptions into problems an operator can act on.

Each problem code here is listed in docs/troubleshooting.md.
"""

from __future__ import annotations

import redis.exceptions

from streamorch.backing.endpoints import PostgresTarget, RedisTarget
from streamorch.domain.errors import StoreError
from streamorch.domain.problems import Problem

# Problems that waiting will not fix: report them at once instead of retrying.
PERMANENT = {
    "postgres.auth_failed",
    "postgres.role_missing",
    "postgres.database_missing",
    "postgres.unknown_host",
    "redis.auth_required",
    "redis.auth_failed",
}


def _cause(exc: BaseException) -> BaseException:
    """The driver's own exception when the store wrapped it (StoreError keeps it as cause)."""
    return exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ is not None else exc


def postgres_problem(exc: BaseException, target: PostgresTarget) -> Problem:
    exc = _cause(exc)
    text = str(exc).strip()
    lowered = text.lower()
    where = f"{target.host}:{target.port}"
    sqlstate = getattr(exc, "sqlstate", None)
    ctx = {"target": target.display, "error": text.splitlines()[0] if text else type(exc).__name__}
    if sqlstate == "3D000" or ("database" in lowered and "does not exist" in lowered):
        return Problem(
            "postgres.database_missing",
            f"database '{target.dbname}' does not exist on {where}",
            f"create it (createdb -h {target.host} -p {target.port} -O {target.user} "
            f"{target.dbname}) or set DB_NAME to an existing database",
            ctx,
        )
    if sqlstate == "28000" or ("role" in lowered and "does not exist" in lowered):
        return Problem(
            "postgres.role_missing",
            f"role '{target.user}' does not exist on {where}",
            f"create it (CREATE ROLE \"{target.user}\" LOGIN PASSWORD '…') or set DB_USER",
            ctx,
        )
    if sqlstate == "28P01" or "password authentication failed" in lowered:
        return Problem(
            "postgres.auth_failed",
            f"password authentication failed for user '{target.user}' on {where}",
            "check DB_PASSWORD (or the password in DATABASE_URL); if the password is right, "
            f"role '{target.user}' may not exist — PostgreSQL does not say which",
            ctx,
        )
    if "no password supplied" in lowered:
        return Problem(
            "postgres.auth_failed",
            f"the server at {where} wants a password for user '{target.user}' and none is set",
            "set DB_PASSWORD (or put the password in DATABASE_URL)",
            ctx,
        )
    if "could not translate host name" in lowered or "name or service not known" in lowered:
        return Problem(
            "postgres.unknown_host",
            f"host name '{target.host}' does not resolve",
            "check DB_HOST / the host in DATABASE_URL for typos, or the DNS of this machine",
            ctx,
        )
    if "connection refused" in lowered or "no such file or directory" in lowered:
        return Problem(
            "postgres.unreachable",
            f"nothing is listening on {where}: PostgreSQL is not running there or the port is wrong",
            "start PostgreSQL, or correct DB_HOST/DB_PORT (or DATABASE_URL); "
            "unset them all to use the embedded server",
            ctx,
        )
    if sqlstate == "57P03" or "starting up" in lowered or "shutting down" in lowered:
        return Problem(
            "postgres.starting",
            f"PostgreSQL on {where} is starting up or shutting down",
            "wait; raise POSTGRES_STARTUP_TIMEOUT if it takes longer than allowed",
            ctx,
        )
    if "too many clients" in lowered or sqlstate == "53300":
        return Problem(
            "postgres.too_many_connections",
            f"PostgreSQL on {where} has no free connection slots",
            "lower DB_POOL_MAX_SIZE across replicas, or raise max_connections on the server",
            ctx,
        )
    if "timeout" in lowered or isinstance(exc, TimeoutError):
        return Problem(
            "postgres.timeout",
            f"PostgreSQL on {where} did not answer in time",
            "check the network path and server load; raise DB_TIMEOUT if the link is slow",
            ctx,
        )
    return Problem(
        "postgres.error",
        f"PostgreSQL on {where} failed: {ctx['error']}",
        "read the PostgreSQL server log for this time",
        ctx,
    )


def redis_problem(exc: BaseException, target: RedisTarget) -> Problem:
    exc = _cause(exc)
    text = str(exc).strip()
    lowered = text.lower()
    where = f"{target.host}:{target.port}"
    ctx = {"target": target.display, "error": text or type(exc).__name__}
    needs_auth = (
        "noauth" in lowered
        or "authentication required" in lowered
        or (
            "already authenticated" in lowered  # RESP3 HELLO refused without credentials
        )
    )
    if needs_auth or (
        isinstance(exc, redis.exceptions.AuthenticationError) and not target.has_password
    ):
        return Problem(
            "redis.auth_required",
            f"Redis on {where} requires a password and none is configured",
            "set REDIS_PASSWORD, or put it in REDIS_URL (redis://:PASSWORD@host:6379/0)",
            ctx,
        )
    if (
        isinstance(exc, redis.exceptions.AuthenticationError)
        or "wrongpass" in lowered
        or ("invalid password" in lowered)
    ):
        return Problem(
            "redis.auth_failed",
            f"Redis on {where} rejected the password",
            "check REDIS_PASSWORD or the password in REDIS_URL",
            ctx,
        )
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return Problem(
            "redis.unknown_host",
            f"host name '{target.host}' does not resolve",
            "check REDIS_HOST / the host in REDIS_URL",
            ctx,
        )
    if isinstance(exc, redis.exceptions.TimeoutError) or "timeout" in lowered:
        return Problem(
            "redis.timeout",
            f"Redis on {where} did not answer in time",
            "check the network path and the Redis server's load",
            ctx,
        )
    if isinstance(exc, redis.exceptions.ConnectionError | ConnectionError | OSError):
        return Problem(
            "redis.unreachable",
            f"nothing is listening on {where}: Redis is not running there or the port is wrong",
            "start Redis, or correct REDIS_HOST/REDIS_PORT (or REDIS_URL); unset them all to use "
            "the embedded server. The orchestrator runs degraded without Redis",
            ctx,
        )
    return Problem(
        "redis.error", f"Redis on {where} failed: {ctx['error']}", "read the Redis server log", ctx
    )


def is_permanent(problem: Problem) -> bool:
    return problem.code in PERMANENT
