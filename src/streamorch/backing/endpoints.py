"""Where PostgreSQL and Redis are: external from the settings, or embedded.

Every command resolves its connection targets here, so `serve`, `migrate`,
`wait` and `doctor` always agree. Targets carry a display form without secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from streamorch.backing.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey
from streamorch.config import Settings
from streamorch.domain.errors import ServiceError
from streamorch.domain.problems import Problem


@dataclass(frozen=True)
class PostgresTarget:
    conninfo: str
    host: str
    port: int
    dbname: str
    user: str
    embedded: bool

    @property
    def display(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


@dataclass(frozen=True)
class RedisTarget:
    url: str
    host: str
    port: int
    has_password: bool
    embedded: bool

    @property
    def display(self) -> str:
        return f"redis://{self.host}:{self.port}"


class AddressError(ValueError):
    """DATABASE_URL (or DB_HOST/DB_PORT) cannot be parsed as a PostgreSQL address."""


def postgres_target(settings: Settings) -> PostgresTarget:
    try:
        return _postgres_target(settings)
    except psycopg.Error as exc:
        raise AddressError(str(exc)) from exc


def _postgres_target(settings: Settings) -> PostgresTarget:
    if settings.database_url is not None:
        conninfo = settings.database_url.get_secret_value()
        parts = conninfo_to_dict(conninfo)
        return PostgresTarget(
            conninfo=conninfo,
            host=str(parts.get("host") or "localhost"),
            port=int(parts.get("port") or 5432),
            dbname=str(parts.get("dbname") or parts.get("user") or ""),
            user=str(parts.get("user") or ""),
            embedded=False,
        )
    if settings.db_host is not None:
        host, port = settings.db_host, settings.db_port
        password = settings.db_password.get_secret_value() if settings.db_password else None
        embedded = False
    else:
        pg = EmbeddedPostgres(DataDir(settings.data_dir))
        port_or_none = pg.status().port
        if port_or_none is None:
            raise ServiceError(
                "postgresql",
                Problem(
                    "embedded.not_started",
                    f"embedded PostgreSQL has never been started in {settings.data_dir}",
                    "run `streamorch services start`, or set DATABASE_URL to use an external server",
                ),
            )
        host, port = "127.0.0.1", port_or_none
        password = app_password(settings)
        embedded = True
    conninfo = make_conninfo(
        host=host, port=port, dbname=settings.db_name, user=settings.db_user, password=password
    )
    return PostgresTarget(conninfo, host, port, settings.db_name, settings.db_user, embedded)


def app_password(settings: Settings) -> str:
    """The application role's password on the embedded server."""
    if settings.db_password is not None:
        return settings.db_password.get_secret_value()
    return DataDir(settings.data_dir).secret("postgres_app_password")


def redis_target(settings: Settings) -> RedisTarget:
    if settings.redis_url is not None:
        url = settings.redis_url.get_secret_value()
        parts = urlsplit(url)
        return RedisTarget(
            url=url,
            host=parts.hostname or "localhost",
            port=parts.port or 6379,
            has_password=bool(parts.password) or settings.redis_password is not None,
            embedded=False,
        )
    if settings.redis_host is not None:
        host, port, embedded = settings.redis_host, settings.redis_port, False
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
    else:
        valkey = EmbeddedValkey(DataDir(settings.data_dir))
        known = valkey.status().port
        if known is None:
            raise ServiceError(
                "redis",
                Problem(
                    "embedded.not_started",
                    f"embedded Valkey has never been started in {settings.data_dir}",
                    "run `streamorch services start`, or set REDIS_URL to use an external server",
                ),
            )
        host, port, embedded = "127.0.0.1", known, True
        password = valkey.password
    auth = f":{quote(password, safe='')}@" if password else ""
    url = f"redis://{auth}{host}:{port}/{settings.redis_db}"
    return RedisTarget(url, host, port, password is not None, embedded)


def conninfo_password(conninfo: str) -> str | None:
    """The password in a PostgreSQL conninfo or URL; None when it has none or cannot be parsed."""
    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        return None
    return str(password) if password else None


def conninfo_port(conninfo: str) -> int:
    """The port a PostgreSQL conninfo or URL names (5432 when it names none)."""
    return int(conninfo_to_dict(conninfo).get("port") or 5432)
