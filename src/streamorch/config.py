"""Configuration: one `Settings`, built once at start-up and passed down.

Every value comes from the environment (names in DESIGN.md). `load_settings()`
reports *every* problem at once, each with a suggested fix, and never echoes a
secret: passwords, tokens and URLs with credentials show only as set/unset.

No configuration at all means the zero-configuration start: embedded PostgreSQL
and Valkey under `STREAMORCH_DATA_DIR`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, JsonValue, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamorch.domain.errors import ConfigurationError
from streamorch.domain.problems import Problem


def _env(*names: str, default: Any = None, example: str | None = None, **kwargs: Any) -> Any:
    extra: dict[str, JsonValue] = {"env": list(names), "example": example}
    return Field(default, validation_alias=AliasChoices(*names), json_schema_extra=extra, **kwargs)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_ignore_empty=True,
        validate_by_name=True,
        validate_by_alias=True,
        extra="ignore",
        frozen=True,
    )

    @classmethod
    def settings_customise_sources(  # type: ignore[no-untyped-def]
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # load_settings() reads the environment mapping it is given; pydantic-settings must
        # not fill the gaps from os.environ behind its back (it does, even in model_validate).
        return (init_settings,)

    # Where embedded servers keep their data when no external service is configured.
    data_dir: Path = _env(
        "STREAMORCH_DATA_DIR", default=Path(".streamorch"), example="./.streamorch"
    )

    # PostgreSQL: DATABASE_URL, or DB_* (POSTGRES_* accepted as aliases).
    database_url: SecretStr | None = _env(
        "DATABASE_URL", example="postgresql://streamorch:secret@db:5432/streamorch"
    )
    db_host: str | None = _env("DB_HOST", "POSTGRES_HOST", example="db.internal")
    db_port: int = _env("DB_PORT", "POSTGRES_PORT", default=5432, ge=1, le=65535, example="5432")
    db_name: str = _env("DB_NAME", "POSTGRES_DB", default="streamorch")
    db_user: str = _env("DB_USER", "POSTGRES_USER", default="streamorch")
    db_password: SecretStr | None = _env("DB_PASSWORD", "POSTGRES_PASSWORD")
    db_timeout: float = _env("DB_TIMEOUT", default=5.0, gt=0, le=300, example="5")
    db_max_retries: int = _env("DB_MAX_RETRIES", default=5, ge=0, le=100, example="5")
    db_pool_min_size: int = _env("DB_POOL_MIN_SIZE", default=2, ge=1, le=100, example="2")
    db_pool_max_size: int = _env("DB_POOL_MAX_SIZE", default=10, ge=1, le=1000, example="10")

    # Redis (Valkey): REDIS_URL, or REDIS_HOST/REDIS_PORT.
    redis_url: SecretStr | None = _env("REDIS_URL", example="redis://:secret@cache:6379/0")
    redis_host: str | None = _env("REDIS_HOST", example="cache.internal")
    redis_port: int = _env("REDIS_PORT", default=6379, ge=1, le=65535, example="6379")
    redis_password: SecretStr | None = _env("REDIS_PASSWORD")
    redis_db: int = _env("REDIS_DB", default=0, ge=0, le=15, example="0")
    redis_required: bool = _env("REDIS_REQUIRED", default=False, example="false")

    # Start-up bounds, in seconds.
    postgres_startup_timeout: float = _env(
        "POSTGRES_STARTUP_TIMEOUT", default=60.0, gt=0, le=3600, example="60"
    )
    redis_startup_timeout: float = _env(
        "REDIS_STARTUP_TIMEOUT", default=30.0, gt=0, le=3600, example="30"
    )
    app_startup_timeout: float = _env(
        "APP_STARTUP_TIMEOUT", default=120.0, gt=0, le=7200, example="120"
    )

    # Orchestration timing and policy.
    heartbeat_interval: float = _env("HEARTBEAT_INTERVAL", default=2.0, gt=0, le=300, example="2")
    lease_ttl: float = _env("LEASE_TTL", default=10.0, gt=0, le=3600, example="10")
    reconcile_interval: float = _env("RECONCILE_INTERVAL", default=1.0, gt=0, le=300, example="1")
    rebalance_threshold: float = _env(
        "REBALANCE_THRESHOLD", default=0.0, ge=0, le=1, example="0.05"
    )
    max_moves_per_pass: int = _env("MAX_MOVES_PER_PASS", default=100, ge=0, example="100")
    placement_settle_s: float = _env("PLACEMENT_SETTLE_S", default=0.5, ge=0, le=60, example="0.5")
    placement_settle_max_s: float = _env(
        "PLACEMENT_SETTLE_MAX_S", default=10.0, ge=0, le=600, example="10"
    )
    reconcile_plan_in_thread: bool = _env("RECONCILE_PLAN_IN_THREAD", default=True, example="true")
    # Instances of the original protocol beat every 30-60 s and may be ~35 s late.
    compat_lease_ttl: float = _env("COMPAT_LEASE_TTL", default=150.0, gt=0, le=86400, example="150")

    # Logging.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = _env(
        "LOG_LEVEL", default="INFO", example="INFO"
    )
    log_format: Literal["console", "structured"] = _env(
        "LOG_FORMAT", default="console", example="structured"
    )

    # HTTP server.
    orchestrator_host: str = _env("ORCHESTRATOR_HOST", default="127.0.0.1", example="0.0.0.0")
    orchestrator_port: int = _env("ORCHESTRATOR_PORT", default=8001, ge=1, le=65535, example="8001")
    # API processes on the one listening socket (server/processes.py); each has its own pool.
    server_processes: int = _env("SERVER_PROCESSES", default=1, ge=1, le=64, example="4")
    # Connection limits (api/limits.py): a client has this long to send a request's line and
    # headers, so slow clients cannot hold connections open; past this many open
    # connections (or requests in progress), new requests get 503.
    http_header_timeout: float = _env(
        "HTTP_HEADER_TIMEOUT", default=10.0, gt=0, le=300, example="10"
    )
    http_max_connections: int = _env(
        "HTTP_MAX_CONNECTIONS", default=4096, ge=1, le=1_000_000, example="4096"
    )

    # API tokens; unset means no authentication.
    worker_token: SecretStr | None = _env("STREAMORCH_WORKER_TOKEN")
    admin_token: SecretStr | None = _env("STREAMORCH_ADMIN_TOKEN")
    # /health/detailed and /metrics without a token even when the admin token is set,
    # e.g. for a scraper on a private network that cannot send credentials.
    diagnostics_public: bool = _env("DIAGNOSTICS_PUBLIC", default=False, example="true")

    # Catalog sync from another database (core/catalog_sync.py); off while the DSN is unset.
    streams_source_dsn: SecretStr | None = _env(
        "STREAMS_SOURCE_DSN", example="postgresql://reader:secret@legacy-db:5432/fingerprints"
    )
    streams_source_query: str = _env(
        "STREAMS_SOURCE_QUERY", default="SELECT id, url FROM streams WHERE status = 'active'"
    )
    streams_source_interval: float = _env(
        "STREAMS_SOURCE_INTERVAL", default=60.0, gt=0, le=86400, example="60"
    )
    streams_source_mode: Literal["upsert", "replace"] = _env(
        "STREAMS_SOURCE_MODE", default="replace", example="upsert"
    )
    streams_source_allow_empty: bool = _env(
        "STREAMS_SOURCE_ALLOW_EMPTY", default=False, example="false"
    )

    # Retention (core/retention.py): what history is kept. 0 keeps it forever.
    worker_retention: float = _env("WORKER_RETENTION", default=86_400.0, ge=0, example="86400")
    event_retention: float = _env("EVENT_RETENTION", default=604_800.0, ge=0, example="604800")
    event_max_count: int = _env("EVENT_MAX_COUNT", default=5_000_000, ge=0, example="5000000")
    retention_interval: float = _env(
        "RETENTION_INTERVAL", default=60.0, gt=0, le=86400, example="60"
    )
    retention_batch_size: int = _env(
        "RETENTION_BATCH_SIZE", default=1000, ge=1, le=100_000, example="1000"
    )

    @property
    def postgres_is_external(self) -> bool:
        return self.database_url is not None or self.db_host is not None

    @property
    def redis_is_external(self) -> bool:
        return self.redis_url is not None or self.redis_host is not None

    def describe(self) -> dict[str, str]:
        """Every value by environment name, secrets shown only as set/unset."""
        shown: dict[str, str] = {}
        for name, info in type(self).model_fields.items():
            env_name = _env_names(info)[0]
            value = getattr(self, name)
            if isinstance(value, SecretStr) or name in _SECRET_FIELDS:
                shown[env_name] = "set" if value is not None else "unset"
            elif value is None:
                shown[env_name] = "unset"
            else:
                shown[env_name] = str(value)
        return shown


_SECRET_FIELDS = {
    "database_url",
    "redis_url",
    "db_password",
    "redis_password",
    "streams_source_dsn",
}


def _env_names(info: Any) -> list[str]:
    return list(info.json_schema_extra["env"])


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `environ` (default: the process environment).

    Raises `ConfigurationError` listing every problem, each with a fix.
    """
    env = dict(os.environ if environ is None else environ)
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        for env_name in _env_names(info):
            raw = env.get(env_name)
            if raw is not None and raw.strip() != "":
                values[name] = raw.strip()
                break
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        problems.extend(_problem_from_error(err, env) for err in exc.errors())
        raise ConfigurationError(problems) from None
    problems.extend(check_consistency(settings))
    if problems:
        raise ConfigurationError(problems)
    return settings


def _problem_from_error(err: Any, env: Mapping[str, str]) -> Problem:
    field_name = str(err["loc"][0]) if err["loc"] else ""
    info = Settings.model_fields.get(field_name)
    names = _env_names(info) if info else [field_name.upper()]
    env_name = next((n for n in names if env.get(n)), names[0])
    secret = field_name in _SECRET_FIELDS or "PASSWORD" in env_name or "TOKEN" in env_name
    shown = "<hidden>" if secret else repr(env.get(env_name, ""))
    extra = info.json_schema_extra if info else None
    example = extra.get("example") if isinstance(extra, dict) else None
    expected = _expectation(err, field_name) + (f", e.g. {example}" if example else "")
    default = info.default if info is not None else None
    fix = f"correct {env_name}" + (f", or unset it to use the default {default}" if default else "")
    return Problem(
        code="config.invalid_value",
        message=f"{env_name}={shown}: expected {expected}",
        fix=fix,
        context={"variable": env_name},
    )


def _expectation(err: Any, field_name: str) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind in {"float_parsing", "float_type"}:
        return "seconds as a number" if _is_duration(field_name) else "a number"
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return "a whole number"
    if kind == "bool_parsing":
        return "true or false"
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}"
    if kind in {"greater_than", "greater_than_equal"}:
        bound = ctx.get("gt", ctx.get("ge"))
        return f"a value {'above' if kind == 'greater_than' else 'at least'} {bound}"
    if kind in {"less_than", "less_than_equal"}:
        return f"a value of at most {ctx.get('lt', ctx.get('le'))}"
    return "a valid value"


def _is_duration(field_name: str) -> bool:
    return field_name.endswith(("_timeout", "_interval", "_ttl", "_retention"))


def check_consistency(settings: Settings) -> list[Problem]:
    """Problems that involve more than one value, or the shape of a URL."""
    problems: list[Problem] = []
    if settings.database_url is not None:
        scheme = urlsplit(settings.database_url.get_secret_value()).scheme
        if scheme not in {"postgres", "postgresql"}:
            problems.append(
                Problem(
                    "config.invalid_value",
                    f"DATABASE_URL has scheme {scheme or '(none)'!r}",
                    "use a PostgreSQL URL: postgresql://USER:PASSWORD@HOST:5432/DBNAME",
                    {"variable": "DATABASE_URL"},
                )
            )
    if settings.redis_url is not None:
        scheme = urlsplit(settings.redis_url.get_secret_value()).scheme
        if scheme not in {"redis", "rediss", "unix"}:
            problems.append(
                Problem(
                    "config.invalid_value",
                    f"REDIS_URL has scheme {scheme or '(none)'!r}",
                    "use a Redis URL: redis://[:PASSWORD@]HOST:6379/0",
                    {"variable": "REDIS_URL"},
                )
            )
    if settings.lease_ttl <= settings.heartbeat_interval:
        problems.append(
            Problem(
                "config.lease_too_short",
                f"LEASE_TTL={settings.lease_ttl:g} is not longer than "
                f"HEARTBEAT_INTERVAL={settings.heartbeat_interval:g}",
                "make LEASE_TTL several heartbeats long (e.g. 5 × HEARTBEAT_INTERVAL), "
                "or every worker expires between two heartbeats",
                {"variable": "LEASE_TTL"},
            )
        )
    if settings.reconcile_interval * 2 >= settings.lease_ttl:
        problems.append(
            Problem(
                "config.reconcile_too_slow",
                f"RECONCILE_INTERVAL={settings.reconcile_interval:g} is not under half of "
                f"LEASE_TTL={settings.lease_ttl:g}",
                "keep RECONCILE_INTERVAL well under LEASE_TTL (default 1 s against 10 s), or "
                "failover lags and idle gaps look like outages",
                {"variable": "RECONCILE_INTERVAL"},
            )
        )
    if settings.db_pool_min_size > settings.db_pool_max_size:
        problems.append(
            Problem(
                "config.invalid_value",
                f"DB_POOL_MIN_SIZE={settings.db_pool_min_size} exceeds "
                f"DB_POOL_MAX_SIZE={settings.db_pool_max_size}",
                "make DB_POOL_MIN_SIZE at most DB_POOL_MAX_SIZE",
                {"variable": "DB_POOL_MIN_SIZE"},
            )
        )
    if settings.database_url is not None and settings.db_host is not None:
        problems.append(
            Problem(
                "config.ambiguous_database",
                "both DATABASE_URL and DB_HOST/POSTGRES_HOST are set",
                "set only one of them; DATABASE_URL wins but the other is probably a mistake",
                {"variable": "DATABASE_URL"},
            )
        )
    return problems


MIN_TOKEN_LENGTH = 16
_GENERATE_HINT = (
    "use 32 random characters: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
)


def token_warnings(settings: Settings) -> list[Problem]:
    """Tokens that are set but protect little: short, repetitive, shared, or half set.

    Warnings, not errors: the server starts, and `streamorch config check` lists them.
    """
    warnings: list[Problem] = []
    tokens = {
        "STREAMORCH_ADMIN_TOKEN": settings.admin_token,
        "STREAMORCH_WORKER_TOKEN": settings.worker_token,
    }
    values = {name: t.get_secret_value() for name, t in tokens.items() if t is not None}
    for name, value in values.items():
        if len(value) < MIN_TOKEN_LENGTH or len(set(value)) < 8:
            warnings.append(
                Problem(
                    "config.weak_token",
                    f"{name} is weak ({len(value)} characters, {len(set(value))} different): "
                    "it can be guessed",
                    _GENERATE_HINT,
                    {"variable": name},
                )
            )
    if len(values) == 2 and len(set(values.values())) == 1:
        warnings.append(
            Problem(
                "config.same_tokens",
                "STREAMORCH_ADMIN_TOKEN and STREAMORCH_WORKER_TOKEN are the same: every "
                "worker host can then change the catalog and drain the fleet",
                "give each its own value; " + _GENERATE_HINT,
                {"variable": "STREAMORCH_WORKER_TOKEN"},
            )
        )
    if "STREAMORCH_WORKER_TOKEN" in values and "STREAMORCH_ADMIN_TOKEN" not in values:
        warnings.append(
            Problem(
                "config.admin_api_open",
                "STREAMORCH_WORKER_TOKEN is set but STREAMORCH_ADMIN_TOKEN is not: admin "
                "calls (the catalog, draining, /metrics) need no token",
                "set STREAMORCH_ADMIN_TOKEN too; " + _GENERATE_HINT,
                {"variable": "STREAMORCH_ADMIN_TOKEN"},
            )
        )
    return warnings
