"""Create the application role and database on the embedded server.

Idempotent: running it again changes nothing but the role's password, which
follows DB_PASSWORD (or the generated one) so a changed password takes effect.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from psycopg import sql

from streamorch.backing import diagnose
from streamorch.backing.embedded import DataDir, EmbeddedPostgres
from streamorch.backing.endpoints import PostgresTarget, app_password
from streamorch.config import Settings
from streamorch.domain.errors import ServiceError

log = logging.getLogger(__name__)


async def setup_database(settings: Settings) -> dict[str, bool]:
    """Ensure role DB_USER and database DB_NAME exist; returns what was created."""
    pg = EmbeddedPostgres(DataDir(settings.data_dir))
    port = pg.status().port
    assert port is not None, "setup_database runs after the embedded server started"
    admin = PostgresTarget(
        pg.superuser_conninfo(port), "127.0.0.1", port, "postgres", "postgres", embedded=True
    )
    role, dbname = settings.db_user, settings.db_name
    try:
        conn = await psycopg.AsyncConnection.connect(admin.conninfo, autocommit=True)
        async with conn:
            cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            role_created = await cur.fetchone() is None
            verb = "CREATE" if role_created else "ALTER"
            await conn.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(role), sql.Literal(app_password(settings))
                )
            )
            cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            db_created = await cur.fetchone() is None
            if db_created:
                await conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(dbname), sql.Identifier(role)
                    )
                )
    except psycopg.Error as exc:
        raise ServiceError("postgresql", diagnose.postgres_problem(exc, admin)) from exc
    log.info(
        "database ready",
        extra={
            "action": "setup_database",
            "role": role,
            "database": dbname,
            "role_created": role_created,
            "database_created": db_created,
        },
    )
    return {"role_created": role_created, "database_created": db_created}


async def role_exists(superuser_conninfo: str, role: str, timeout: float) -> bool | None:
    """Whether `role` exists, asked as a superuser; None when the question cannot be asked."""
    try:
        async with asyncio.timeout(timeout):
            conn = await psycopg.AsyncConnection.connect(
                superuser_conninfo, autocommit=True, connect_timeout=max(2, round(timeout))
            )
            async with conn:
                cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                return await cur.fetchone() is not None
    except (psycopg.Error, OSError, TimeoutError):
        return None
