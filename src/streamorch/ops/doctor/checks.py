"""The checks of `streamorch doctor`, each a `Probe` (domain/probes.py): configuration, data
directory, embedded servers, PostgreSQL and its schema, Redis, the API port.

Statuses: `ok`, `warn` (worth knowing, nothing to fix before starting), `fail` (a problem
with a fix) and `skip` (an input it needs is invalid or unusable).
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from streamorch.backing import diagnose, endpoints, provision, waits
from streamorch.backing.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey
from streamorch.backing.endpoints import PostgresTarget, RedisTarget
from streamorch.config import Settings, check_consistency, load_settings
from streamorch.domain.errors import (
    ConfigurationError,
    EmbeddedServiceError,
    ServiceError,
    StoreError,
)
from streamorch.domain.probes import Probe, Status, schema_problem
from streamorch.domain.problems import Problem
from streamorch.store import diagnostics, migrations

PROBE_TIMEOUT_S = 3.0
HEALTH_TIMEOUT_S = 1.0
START_FIX = "run ./start-orchestrator.sh or `streamorch services start`"

# Settings fields each check reads; a check whose input is invalid is skipped.
POSTGRES_FIELDS = frozenset(
    {"database_url", "db_host", "db_port", "db_name", "db_user", "db_password"}
)
REDIS_FIELDS = frozenset({"redis_url", "redis_host", "redis_port", "redis_password", "redis_db"})
API_FIELDS = frozenset({"orchestrator_host", "orchestrator_port"})


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Configuration:
    """Settings usable for the other checks, and what was wrong with the input."""

    settings: Settings
    problems: list[Problem]
    invalid: frozenset[str]  # field names with a problem; checks reading them are skipped


def _env_names(name: str) -> list[str]:
    extra = Settings.model_fields[name].json_schema_extra
    assert isinstance(extra, dict)
    return [str(n) for n in extra["env"]]  # type: ignore[union-attr]


FIELD_BY_ENV = {env: name for name in Settings.model_fields for env in _env_names(name)}


def load_configuration(environ: Mapping[str, str]) -> Configuration:
    try:
        return Configuration(load_settings(environ), [], frozenset())
    except ConfigurationError as exc:
        problems = list(exc.problems)
    # Same lookup as load_settings; drop what fails validation until the rest validates.
    values: dict[str, str] = {}
    for name in Settings.model_fields:
        for env_name in _env_names(name):
            raw = environ.get(env_name)
            if raw is not None and raw.strip():
                values[name] = raw.strip()
                break
    invalid: set[str] = set()
    while True:
        try:
            settings = Settings.model_validate(values)
            break
        except ValidationError as err:
            bad = {str(e["loc"][0]) for e in err.errors() if e["loc"]} & set(values)
            if not bad:  # nothing left to drop: use the defaults, trust no value
                settings = Settings.model_validate({})
                invalid.update(Settings.model_fields)
                break
            invalid |= bad
            for name in bad:
                del values[name]
    # load_settings stops at the first kind of problem; report the consistency ones too.
    for problem in check_consistency(settings):
        if problem not in problems:
            problems.append(problem)
    for problem in problems:
        field_name = FIELD_BY_ENV.get(str(problem.context.get("variable", "")))
        if field_name is not None:
            invalid.add(field_name)
    return Configuration(settings, problems, frozenset(invalid))


def configuration_checks(config: Configuration) -> list[Probe]:
    if not config.problems:
        count = len(Settings.model_fields)
        return [Probe("configuration", "ok", f"all {count} settings are valid")]
    return [Probe("configuration", "fail", p.message, p) for p in config.problems]


def describe(config: Configuration) -> dict[str, str]:
    shown = config.settings.describe()
    for name in config.invalid:
        shown[_env_names(name)[0]] = "invalid"
    return shown


def skip(name: str, config: Configuration, fields: Iterable[str]) -> Probe | None:
    bad = sorted(_env_names(f)[0] for f in fields if f in config.invalid)
    if not bad:
        return None
    return Probe(name, "skip", f"not checked: {', '.join(bad)} invalid (see configuration)")


# -- data directory and embedded servers -----------------------------------------------------


def check_data_dir(path: Path) -> Probe:
    """Whether the embedded servers could write their data directory (creating it if needed)."""
    root = path.expanduser().resolve()
    fix = (
        "set STREAMORCH_DATA_DIR to a directory this user can write, "
        f"or fix its permissions (chown/chmod {root})"
    )
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Probe.failed(
            "data_dir",
            Problem(
                "embedded.data_dir_not_writable",
                f"data directory {root} is not writable: {existing} is not a directory",
                f"set STREAMORCH_DATA_DIR to a directory path, or move {existing} out of the way",
                {"path": str(root)},
            ),
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".doctor-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return Probe.failed(
            "data_dir",
            Problem(
                "embedded.data_dir_not_writable",
                f"data directory {root} is not writable ({exc.strerror})",
                fix,
                {"path": str(root)},
            ),
        )
    if existing == root:
        return Probe("data_dir", "ok", f"{root} is writable", data={"path": str(root)})
    return Probe(
        "data_dir",
        "ok",
        f"{root} does not exist yet; it can be created under {existing}",
        data={"path": str(root)},
    )


def check_embedded(server: type[EmbeddedPostgres | EmbeddedValkey], data_dir: Path) -> Probe:
    postgres = server is EmbeddedPostgres
    name, label = (
        ("embedded_postgresql", "PostgreSQL") if postgres else ("embedded_valkey", "Valkey")
    )
    code = "embedded.postgres_not_running" if postgres else "embedded.valkey_not_running"
    data = DataDir(data_dir)
    try:
        endpoint = server(data).status()
    except EmbeddedServiceError as exc:
        return Probe.failed(name, exc.problem)
    except OSError as exc:
        return Probe.failed(
            name,
            Problem(
                code,
                f"cannot read the state of embedded {label} in {data.root} ({exc.strerror})",
                f"fix the data directory, then {START_FIX}",
                {"path": str(data.root)},
            ),
        )
    if not endpoint.running:
        where = f" (last port {endpoint.port})" if endpoint.port else ""
        external = "DATABASE_URL" if postgres else "REDIS_URL"
        return Probe.failed(
            name,
            Problem(
                code,
                f"embedded {label} is not running in {data.root}{where}",
                f"{START_FIX}, or set {external} to use an external server",
                {"path": str(data.root)},
            ),
        )
    return Probe(
        name,
        "ok",
        f"running (pid {endpoint.pid}, port {endpoint.port})",
        data={"pid": endpoint.pid, "port": endpoint.port},
    )


# -- PostgreSQL ------------------------------------------------------------------------------


def postgres_target(settings: Settings) -> PostgresTarget | Problem:
    try:
        return endpoints.postgres_target(settings)
    except ServiceError as exc:
        return exc.problem
    except ValueError:  # (AddressError too) the text may quote the URL: never show it
        source = "DATABASE_URL" if settings.database_url is not None else "DB_HOST/DB_PORT"
        return Problem(
            "config.invalid_value",
            f"{source} cannot be parsed as a PostgreSQL address",
            "use postgresql://USER:PASSWORD@HOST:5432/DBNAME",
            {"variable": source.split("/")[0]},
        )


async def check_postgres(
    target: PostgresTarget, *, superuser_conninfo: str | None, timeout: float
) -> list[Probe]:
    result = await waits.probe_postgres(target, timeout)
    if not result.ok:
        assert result.problem is not None
        problem = result.problem
        if problem.code == "postgres.auth_failed" and superuser_conninfo is not None:
            problem = await _explain_auth_failure(problem, target, superuser_conninfo, timeout)
        return [Probe.failed("postgresql", problem)]
    ok = Probe(
        "postgresql",
        "ok",
        f"{target.display} answers: PostgreSQL {result.version}, {result.latency_ms} ms",
        data={"target": target.display, "version": result.version, "latency_ms": result.latency_ms},
    )
    return [ok, await check_schema(target, timeout)]


async def _explain_auth_failure(
    problem: Problem, target: PostgresTarget, superuser_conninfo: str, timeout: float
) -> Problem:
    """PostgreSQL says "password authentication failed" for a missing role too: ask pg_roles."""
    if endpoints.conninfo_port(superuser_conninfo) != target.port:
        return problem  # a superuser of another server cannot tell
    exists = await provision.role_exists(superuser_conninfo, target.user, timeout)
    if exists is None:
        return problem  # keep the honest combined message
    where = f"{target.host}:{target.port}"
    if not exists:
        fix = (
            f"run `streamorch services start` (it creates role '{target.user}'), or set DB_USER "
            "to an existing role"
            if target.embedded
            else f"create it (CREATE ROLE \"{target.user}\" LOGIN PASSWORD '…') or set DB_USER "
            "(or the user in DATABASE_URL) to an existing role"
        )
        return Problem(
            "postgres.role_missing",
            f"role '{target.user}' does not exist on {where}",
            fix,
            problem.context,
        )
    if "password authentication failed" not in str(problem.context.get("error", "")).lower():
        return problem  # e.g. no password given at all: already specific
    fix = (
        "check DB_PASSWORD, or run `streamorch services start` to set the role's password to "
        "DB_PASSWORD (or the generated one)"
        if target.embedded
        else "check DB_PASSWORD (or the password in DATABASE_URL)"
    )
    return Problem(
        "postgres.auth_failed",
        f"password authentication failed for user '{target.user}' on {where}: "
        "the role exists, so the password is wrong",
        fix,
        problem.context,
    )


async def check_schema(target: PostgresTarget, timeout: float) -> Probe:
    expected = migrations.expected_version()
    try:
        current = await diagnostics.schema_version_at(target.conninfo, timeout)
    except (StoreError, OSError, TimeoutError) as exc:
        return Probe.failed("postgresql_schema", diagnose.postgres_problem(exc, target))
    data = {"current": current, "expected": expected}
    problem = schema_problem(
        current,
        expected,
        where=f"schema of '{target.dbname}'",
        fix="run `streamorch migrate` (the server also applies migrations when it starts)",
        too_new_fix="run the orchestrator version that migrated this database, or a newer one",
    )
    if problem is None:
        return Probe("postgresql_schema", "ok", f"version {current}, up to date", data=data)
    status: Status = "warn" if current < expected else "fail"
    return Probe("postgresql_schema", status, problem.message, problem, data)


# -- Redis -----------------------------------------------------------------------------------


def redis_target(settings: Settings) -> RedisTarget | Problem:
    try:
        return endpoints.redis_target(settings)
    except ServiceError as exc:
        return exc.problem
    except ValueError:  # e.g. a non-numeric port; the text may quote the URL
        return Problem(
            "config.invalid_value",
            "REDIS_URL cannot be parsed as a Redis address",
            "use redis://[:PASSWORD@]HOST:6379/0",
            {"variable": "REDIS_URL"},
        )


async def check_redis(target: RedisTarget, *, required: bool, timeout: float) -> Probe:
    result = await waits.probe_redis(target, timeout)
    if not result.ok:
        assert result.problem is not None
        check = Probe.failed("redis", result.problem)
        if not required:
            check = replace(check, detail=f"{check.detail} (the server would run degraded)")
        return check
    return Probe(
        "redis",
        "ok",
        f"{target.display} answers: version {result.version}, {result.latency_ms} ms",
        data={"target": target.display, "version": result.version, "latency_ms": result.latency_ms},
    )


# -- API port --------------------------------------------------------------------------------


async def check_api_port(host: str, port: int, timeout: float = HEALTH_TIMEOUT_S) -> Probe:
    """Bind as `serve` will; if the port is taken, see whether an orchestrator holds it."""
    data: dict[str, Any] = {"host": host, "port": port}
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno != errno.EADDRINUSE:
            return Probe.failed(
                "api_port",
                Problem(
                    "api.bind_failed",
                    f"cannot listen on {host}:{port}: {reason}",
                    "set ORCHESTRATOR_HOST to an address of this machine (127.0.0.1, 0.0.0.0) "
                    "and ORCHESTRATOR_PORT to a port this user may bind (1024 or above)",
                    data,
                ),
            )
        health = await _orchestrator_health(host, port, timeout)
        if health is not None:
            return Probe(
                "api_port",
                "ok",
                f"{host}:{port} is held by a running Stream Orchestrator "
                f"(version {health.get('version')}, pid {health.get('pid')}, "
                f"reports {health.get('status')})",
                data={**data, "held_by": "streamorch", **health},
            )
        return Probe.failed(
            "api_port",
            Problem(
                "api.port_in_use",
                f"port {port} on {host} is in use by another program (not a Stream Orchestrator)",
                f"stop that program (find it with `ss -ltnp 'sport = :{port}'`), "
                "or set ORCHESTRATOR_PORT to a free port",
                data,
            ),
        )
    return Probe("api_port", "ok", f"{host}:{port} is free", data=data)


async def _orchestrator_health(host: str, port: int, timeout: float) -> dict[str, Any] | None:
    """The /health of an orchestrator on host:port, or None if something else answers."""
    probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    if ":" in probe_host:
        probe_host = f"[{probe_host}]"
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.get(f"http://{probe_host}:{port}/health")
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    services, details = body.get("services"), body.get("details")
    if not (isinstance(services, dict) and "postgresql" in services and isinstance(details, dict)):
        return None
    return {
        "status": body.get("status"),
        "version": details.get("version"),
        "pid": details.get("pid"),
    }
