"""`streamorch doctor`: every check an operator would otherwise make by hand, in one report.

    configuration        every setting valid (each problem is its own failed check)
    data_dir             the embedded servers' data directory is writable (embedded mode only)
    embedded_postgresql  the embedded servers run (only for the services that are embedded)
    embedded_valkey
    postgresql           connects and answers; server version and latency
    postgresql_schema    schema version against the migrations this version ships
    redis                connects and answers PING; server version and latency
    api_port             ORCHESTRATOR_HOST:ORCHESTRATOR_PORT is free, or held by an orchestrator

A check is `ok`, `warn` (worth knowing, nothing to fix before starting: the server applies
pending migrations itself), `fail` (a problem with a fix) or `skip` (could not run because an
input it needs is invalid or unusable). An invalid configuration does not stop the other
checks: values that fail validation fall back to their defaults, and only the checks that
depend on an invalid value are skipped.

The report never holds a secret: settings show as set/unset, and every password or URL
known to the run is scrubbed from all text before the report is returned.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import tempfile
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError

from streamorch.backing import diagnose, endpoints, waits
from streamorch.backing.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey
from streamorch.backing.endpoints import PostgresTarget, RedisTarget
from streamorch.config import Settings, check_consistency, load_settings
from streamorch.domain.errors import ConfigurationError, EmbeddedServiceError, ServiceError
from streamorch.domain.problems import Problem
from streamorch.ops.startup import ExitCode
from streamorch.store import migrations

PROBE_TIMEOUT_S = 3.0
HEALTH_TIMEOUT_S = 1.0
START_FIX = "run ./start-orchestrator.sh or `streamorch services start`"

Status = Literal["ok", "warn", "fail", "skip"]

# Settings fields each check reads; a check whose input is invalid is skipped.
_POSTGRES_FIELDS = frozenset(
    {"database_url", "db_host", "db_port", "db_name", "db_user", "db_password"}
)
_REDIS_FIELDS = frozenset({"redis_url", "redis_host", "redis_port", "redis_password", "redis_db"})
_API_FIELDS = frozenset({"orchestrator_host", "orchestrator_port"})
_SECRET_FIELDS = frozenset(
    {"database_url", "redis_url", "db_password", "redis_password", "worker_token", "admin_token"}
)
_MIN_SCRUB_LEN = 4  # shorter "secrets" would mangle every message they happen to occur in


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    problem: Problem | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "problem": self.problem.as_dict() if self.problem else None,
            "data": self.data,
        }


@dataclass(frozen=True)
class Report:
    configuration: dict[str, str]  # Settings.describe(); invalid values show as "invalid"
    checks: list[Check]

    @property
    def problems(self) -> list[Problem]:
        return [c.problem for c in self.checks if c.problem is not None]

    @property
    def config_valid(self) -> bool:
        return not any(c.name == "configuration" and c.status == "fail" for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 nothing failed (warnings allowed); 10 only the configuration; else 1."""
        failed = [c for c in self.checks if c.status == "fail"]
        if not failed:
            return int(ExitCode.OK)
        if all(c.name == "configuration" for c in failed):
            return int(ExitCode.CONFIG)
        return int(ExitCode.FAILURE)

    def get(self, name: str) -> Check:
        """The first check called `name` (several only for configuration problems)."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "configuration": self.configuration,
            "checks": [c.as_dict() for c in self.checks],
        }


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


_FIELD_BY_ENV = {env: name for name in Settings.model_fields for env in _env_names(name)}


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
        name = _FIELD_BY_ENV.get(str(problem.context.get("variable", "")))
        if name is not None:
            invalid.add(name)
    return Configuration(settings, problems, frozenset(invalid))


def _configuration_checks(config: Configuration) -> list[Check]:
    if not config.problems:
        count = len(Settings.model_fields)
        return [Check("configuration", "ok", f"all {count} settings are valid")]
    return [Check("configuration", "fail", p.message, p) for p in config.problems]


def _describe(config: Configuration) -> dict[str, str]:
    shown = config.settings.describe()
    for name in config.invalid:
        shown[_env_names(name)[0]] = "invalid"
    return shown


def _skip(name: str, config: Configuration, fields: Iterable[str]) -> Check | None:
    bad = sorted(_env_names(f)[0] for f in fields if f in config.invalid)
    if not bad:
        return None
    return Check(name, "skip", f"not checked: {', '.join(bad)} invalid (see configuration)")


# -- data directory and embedded servers -----------------------------------------------------


def check_data_dir(path: Path) -> Check:
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
        return _fail(
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
        return _fail(
            "data_dir",
            Problem(
                "embedded.data_dir_not_writable",
                f"data directory {root} is not writable ({exc.strerror})",
                fix,
                {"path": str(root)},
            ),
        )
    if existing == root:
        return Check("data_dir", "ok", f"{root} is writable", data={"path": str(root)})
    return Check(
        "data_dir",
        "ok",
        f"{root} does not exist yet; it can be created under {existing}",
        data={"path": str(root)},
    )


def check_embedded(server: type[EmbeddedPostgres | EmbeddedValkey], data_dir: Path) -> Check:
    postgres = server is EmbeddedPostgres
    name, label = (
        ("embedded_postgresql", "PostgreSQL") if postgres else ("embedded_valkey", "Valkey")
    )
    code = "embedded.postgres_not_running" if postgres else "embedded.valkey_not_running"
    data = DataDir(data_dir)
    try:
        endpoint = server(data).status()
    except EmbeddedServiceError as exc:
        return _fail(name, exc.problem)
    except OSError as exc:
        return _fail(
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
        return _fail(
            name,
            Problem(
                code,
                f"embedded {label} is not running in {data.root}{where}",
                f"{START_FIX}, or set {external} to use an external server",
                {"path": str(data.root)},
            ),
        )
    return Check(
        name,
        "ok",
        f"running (pid {endpoint.pid}, port {endpoint.port})",
        data={"pid": endpoint.pid, "port": endpoint.port},
    )


# -- PostgreSQL ------------------------------------------------------------------------------


def _postgres_target(settings: Settings) -> PostgresTarget | Problem:
    try:
        return endpoints.postgres_target(settings)
    except ServiceError as exc:
        return exc.problem
    except (ValueError, psycopg.Error):  # the text may quote the URL: never show it
        source = "DATABASE_URL" if settings.database_url is not None else "DB_HOST/DB_PORT"
        return Problem(
            "config.invalid_value",
            f"{source} cannot be parsed as a PostgreSQL address",
            "use postgresql://USER:PASSWORD@HOST:5432/DBNAME",
            {"variable": source.split("/")[0]},
        )


async def check_postgres(
    target: PostgresTarget, *, superuser_conninfo: str | None, timeout: float
) -> list[Check]:
    result = await waits.probe_postgres(target, timeout)
    if not result.ok:
        assert result.problem is not None
        problem = result.problem
        if problem.code == "postgres.auth_failed" and superuser_conninfo is not None:
            problem = await _explain_auth_failure(problem, target, superuser_conninfo, timeout)
        return [_fail("postgresql", problem)]
    ok = Check(
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
    if int(conninfo_to_dict(superuser_conninfo).get("port") or 5432) != target.port:
        return problem  # a superuser of another server cannot tell
    try:
        async with asyncio.timeout(timeout):
            conn = await psycopg.AsyncConnection.connect(
                superuser_conninfo, autocommit=True, connect_timeout=max(2, round(timeout))
            )
            async with conn:
                cur = await conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", (target.user,)
                )
                exists = await cur.fetchone() is not None
    except (psycopg.Error, OSError, TimeoutError):
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


async def check_schema(target: PostgresTarget, timeout: float) -> Check:
    expected = migrations.expected_version()
    try:
        async with asyncio.timeout(timeout):
            conn = await psycopg.AsyncConnection.connect(
                target.conninfo, autocommit=True, connect_timeout=max(2, round(timeout))
            )
            async with conn:
                current = await migrations.current_version(conn)
    except (psycopg.Error, OSError, TimeoutError) as exc:
        return _fail("postgresql_schema", diagnose.postgres_problem(exc, target))
    data = {"current": current, "expected": expected}
    if current == expected:
        return Check("postgresql_schema", "ok", f"version {current}, up to date", data=data)
    if current < expected:
        problem = Problem(
            "postgres.schema_outdated",
            f"schema of '{target.dbname}' is at version {current}, this orchestrator needs "
            f"{expected}",
            "run `streamorch migrate` (the server also applies migrations when it starts)",
        )
        return Check("postgresql_schema", "warn", problem.message, problem, data)
    return Check(
        "postgresql_schema",
        "fail",
        f"schema of '{target.dbname}' is at version {current}, newer than this orchestrator "
        f"knows ({expected})",
        Problem(
            "postgres.schema_too_new",
            f"schema of '{target.dbname}' is at version {current}, newer than this "
            f"orchestrator knows ({expected})",
            "run the orchestrator version that migrated this database, or a newer one",
        ),
        data,
    )


# -- Redis -----------------------------------------------------------------------------------


def _redis_target(settings: Settings) -> RedisTarget | Problem:
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


async def check_redis(target: RedisTarget, *, required: bool, timeout: float) -> Check:
    result = await waits.probe_redis(target, timeout)
    if not result.ok:
        assert result.problem is not None
        check = _fail("redis", result.problem)
        if not required:
            check = replace(check, detail=f"{check.detail} (the server would run degraded)")
        return check
    return Check(
        "redis",
        "ok",
        f"{target.display} answers: version {result.version}, {result.latency_ms} ms",
        data={"target": target.display, "version": result.version, "latency_ms": result.latency_ms},
    )


# -- API port --------------------------------------------------------------------------------


async def check_api_port(host: str, port: int, timeout: float = HEALTH_TIMEOUT_S) -> Check:
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
            return _fail(
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
            return Check(
                "api_port",
                "ok",
                f"{host}:{port} is held by a running Stream Orchestrator "
                f"(version {health.get('version')}, pid {health.get('pid')}, "
                f"reports {health.get('status')})",
                data={**data, "held_by": "streamorch", **health},
            )
        return _fail(
            "api_port",
            Problem(
                "api.port_in_use",
                f"port {port} on {host} is in use by another program (not a Stream Orchestrator)",
                f"stop that program (find it with `ss -ltnp 'sport = :{port}'`), "
                "or set ORCHESTRATOR_PORT to a free port",
                data,
            ),
        )
    return Check("api_port", "ok", f"{host}:{port} is free", data=data)


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


# -- the whole report ------------------------------------------------------------------------


async def run(
    environ: Mapping[str, str] | None = None,
    *,
    superuser_conninfo: str | None = None,
    timeout: float = PROBE_TIMEOUT_S,
) -> Report:
    """Run every check against `environ` (default: the process environment).

    `superuser_conninfo` lets a PostgreSQL superuser tell a missing role from a wrong
    password; without it, an embedded server's superuser is used when PostgreSQL is embedded.
    """
    env = dict(os.environ if environ is None else environ)
    config = load_configuration(env)
    settings = config.settings
    checks = _configuration_checks(config)
    secrets = _secrets_in(env)

    embedded_pg = not settings.postgres_is_external
    embedded_redis = not settings.redis_is_external
    pg_fields = _POSTGRES_FIELDS | ({"data_dir"} if embedded_pg else set())
    redis_fields = _REDIS_FIELDS | ({"data_dir"} if embedded_redis else set())

    usable_data_dir = True
    if embedded_pg or embedded_redis:
        data_check = _skip("data_dir", config, ["data_dir"]) or check_data_dir(settings.data_dir)
        usable_data_dir = data_check.status == "ok"
        checks.append(data_check)
    for embedded, server in ((embedded_pg, EmbeddedPostgres), (embedded_redis, EmbeddedValkey)):
        if not embedded:
            continue
        name = "embedded_postgresql" if server is EmbeddedPostgres else "embedded_valkey"
        if usable_data_dir:
            checks.append(check_embedded(server, settings.data_dir))
        else:
            checks.append(Check(name, "skip", "not checked: the data directory is unusable"))
    down = {c.name for c in checks if c.name.startswith("embedded_") and c.status != "ok"}

    async def postgres() -> list[Check]:
        skipped = _skip("postgresql", config, pg_fields)
        if skipped:
            return [skipped]
        if "embedded_postgresql" in down:
            return [Check("postgresql", "skip", "not checked: embedded PostgreSQL is not running")]
        target = _postgres_target(settings)
        if isinstance(target, Problem):
            return [_fail("postgresql", target)]
        secrets.update(_conninfo_password(target.conninfo))
        superuser = superuser_conninfo
        if superuser is None and target.embedded:
            superuser = EmbeddedPostgres(DataDir(settings.data_dir)).superuser_conninfo(target.port)
        if superuser is not None:
            secrets.update(_conninfo_password(superuser))
        return await check_postgres(target, superuser_conninfo=superuser, timeout=timeout)

    async def redis() -> list[Check]:
        skipped = _skip("redis", config, redis_fields)
        if skipped:
            return [skipped]
        if "embedded_valkey" in down:
            return [Check("redis", "skip", "not checked: embedded Valkey is not running")]
        target = _redis_target(settings)
        if isinstance(target, Problem):
            return [_fail("redis", target)]
        secrets.update(_url_password(target.url))
        return [await check_redis(target, required=settings.redis_required, timeout=timeout)]

    async def api() -> list[Check]:
        skipped = _skip("api_port", config, _API_FIELDS)
        if skipped:
            return [skipped]
        return [await check_api_port(settings.orchestrator_host, settings.orchestrator_port)]

    groups = await asyncio.gather(
        _guarded("postgresql", postgres()),
        _guarded("redis", redis()),
        _guarded("api_port", api()),
    )
    checks.extend(check for group in groups for check in group)
    return _scrubbed(Report(_describe(config), checks), secrets)


async def _guarded(name: str, checks: Awaitable[list[Check]]) -> list[Check]:
    """A bug in one check must not hide the results of the others."""
    try:
        return await checks
    except Exception as exc:
        return [
            _fail(
                name,
                Problem(
                    "doctor.check_failed",
                    f"the {name} check itself failed: {type(exc).__name__}: {exc}",
                    "report this as a bug in streamorch doctor, with this output",
                ),
            )
        ]


def _fail(name: str, problem: Problem) -> Check:
    return Check(name, "fail", problem.message, problem)


# -- secrets ---------------------------------------------------------------------------------


def _secrets_in(env: Mapping[str, str]) -> set[str]:
    found: set[str] = set()
    for env_name, name in _FIELD_BY_ENV.items():
        value = (env.get(env_name) or "").strip()
        if name not in _SECRET_FIELDS or not value:
            continue
        found.add(value)
        found.update(_url_password(value))
        if name == "database_url":
            found.update(_conninfo_password(value))
    return found


def _url_password(url: str) -> set[str]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return set()
    return {password, unquote(password)} if password else set()


def _conninfo_password(conninfo: str) -> set[str]:
    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        return set()
    return {str(password)} if password else set()


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, secrets) for v in value)
    return value


def _scrubbed(report: Report, secrets: set[str]) -> Report:
    ordered = sorted((s for s in secrets if len(s) >= _MIN_SCRUB_LEN), key=len, reverse=True)
    checks = []
    for check in report.checks:
        problem = check.problem
        if problem is not None:
            problem = Problem(
                problem.code,
                _scrub(problem.message, ordered),
                _scrub(problem.fix, ordered),
                _scrub(problem.context, ordered),
            )
        checks.append(
            Check(
                check.name,
                check.status,
                _scrub(check.detail, ordered),
                problem,
                _scrub(check.data, ordered),
            )
        )
    return Report(_scrub(report.configuration, ordered), checks)
