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
import os
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

from streamorch.backing.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey
from streamorch.domain.probes import Probe
from streamorch.domain.problems import Problem
from streamorch.ops.doctor import scrub
from streamorch.ops.doctor.checks import (
    API_FIELDS,
    POSTGRES_FIELDS,
    PROBE_TIMEOUT_S,
    REDIS_FIELDS,
    check_api_port,
    check_data_dir,
    check_embedded,
    check_postgres,
    check_redis,
    configuration_checks,
    describe,
    load_configuration,
    postgres_target,
    redis_target,
    skip,
)
from streamorch.ops.startup import ExitCode

Check = Probe  # a check of the report is a Probe


@dataclass(frozen=True)
class Report:
    configuration: dict[str, str]  # Settings.describe(); invalid values show as "invalid"
    checks: list[Probe]

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

    def get(self, name: str) -> Probe:
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
    checks = configuration_checks(config)
    secrets = scrub.secrets_in(env)

    embedded_pg = not settings.postgres_is_external
    embedded_redis = not settings.redis_is_external
    pg_fields = POSTGRES_FIELDS | ({"data_dir"} if embedded_pg else set())
    redis_fields = REDIS_FIELDS | ({"data_dir"} if embedded_redis else set())

    usable_data_dir = True
    if embedded_pg or embedded_redis:
        data_check = skip("data_dir", config, ["data_dir"]) or check_data_dir(settings.data_dir)
        usable_data_dir = data_check.status == "ok"
        checks.append(data_check)
    for embedded, server in ((embedded_pg, EmbeddedPostgres), (embedded_redis, EmbeddedValkey)):
        if not embedded:
            continue
        name = "embedded_postgresql" if server is EmbeddedPostgres else "embedded_valkey"
        if usable_data_dir:
            checks.append(check_embedded(server, settings.data_dir))
        else:
            checks.append(Probe(name, "skip", "not checked: the data directory is unusable"))
    down = {c.name for c in checks if c.name.startswith("embedded_") and c.status != "ok"}

    async def postgres() -> list[Probe]:
        skipped = skip("postgresql", config, pg_fields)
        if skipped:
            return [skipped]
        if "embedded_postgresql" in down:
            return [Probe("postgresql", "skip", "not checked: embedded PostgreSQL is not running")]
        target = postgres_target(settings)
        if isinstance(target, Problem):
            return [Probe.failed("postgresql", target)]
        secrets.update(scrub.conninfo_password(target.conninfo))
        superuser = superuser_conninfo
        if superuser is None and target.embedded:
            superuser = EmbeddedPostgres(DataDir(settings.data_dir)).superuser_conninfo(target.port)
        if superuser is not None:
            secrets.update(scrub.conninfo_password(superuser))
        return await check_postgres(target, superuser_conninfo=superuser, timeout=timeout)

    async def redis() -> list[Probe]:
        skipped = skip("redis", config, redis_fields)
        if skipped:
            return [skipped]
        if "embedded_valkey" in down:
            return [Probe("redis", "skip", "not checked: embedded Valkey is not running")]
        target = redis_target(settings)
        if isinstance(target, Problem):
            return [Probe.failed("redis", target)]
        secrets.update(scrub.url_password(target.url))
        return [await check_redis(target, required=settings.redis_required, timeout=timeout)]

    async def api() -> list[Probe]:
        skipped = skip("api_port", config, API_FIELDS)
        if skipped:
            return [skipped]
        return [await check_api_port(settings.orchestrator_host, settings.orchestrator_port)]

    groups = await asyncio.gather(
        _guarded("postgresql", postgres()),
        _guarded("redis", redis()),
        _guarded("api_port", api()),
    )
    checks.extend(check for group in groups for check in group)
    hidden = scrub.ordered(secrets)
    return Report(
        scrub.scrub(describe(config), hidden), [scrub.scrub_probe(c, hidden) for c in checks]
    )


async def _guarded(name: str, checks: Awaitable[list[Probe]]) -> list[Probe]:
    """A bug in one check must not hide the results of the others."""
    try:
        return await checks
    except Exception as exc:
        return [
            Probe.failed(
                name,
                Problem(
                    "doctor.check_failed",
                    f"the {name} check itself failed: {type(exc).__name__}: {exc}",
                    "report this as a bug in streamorch doctor, with this output",
                ),
            )
        ]
