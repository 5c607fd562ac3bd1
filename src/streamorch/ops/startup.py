"""The start-up sequence: every phase timed, logged, and mapped to an exit code.

    1 config     load and validate settings (done by the caller: it needs them to log)
    2 services   start embedded PostgreSQL / Valkey when no external one is configured
    3 postgres   wait for PostgreSQL (POSTGRES_STARTUP_TIMEOUT), create role and database
                 on the embedded server
    4 redis      wait for Redis (REDIS_STARTUP_TIMEOUT); without REDIS_REQUIRED a failure
                 only degrades the server
    5 migrate    apply migrations under an advisory lock
    6 verify     check both services once more, and the schema version
    7 serve      bind the port and start the app (see server/serve.py)

The whole sequence is bounded by APP_STARTUP_TIMEOUT. A failing phase raises
`StartupError` carrying the phase, its exit code and the problem with a fix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import IntEnum

from streamorch.backing import endpoints, provision, waits
from streamorch.backing.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey, Endpoint
from streamorch.config import Settings
from streamorch.domain.errors import ServiceError, StartupError, StreamorchError
from streamorch.domain.probes import Probe, schema_problem
from streamorch.domain.problems import Problem
from streamorch.store import diagnostics, migrations

log = logging.getLogger(__name__)


class ExitCode(IntEnum):
    """Process exit codes, one per phase (documented in docs/reference/exit-codes.md)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    INSTALL = 3
    CONFIG = 10
    SERVICES = 11
    POSTGRES = 12
    REDIS = 13
    DATABASE_SETUP = 14
    MIGRATE = 15
    VERIFY = 16
    SERVE = 17
    TIMEOUT = 18


@dataclass
class PhaseRecord:
    name: str
    duration_ms: float
    outcome: str


@dataclass
class StartupReport:
    phases: list[PhaseRecord] = field(default_factory=list)
    redis_available: bool = False
    migrations_applied: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class EmbeddedServices:
    """The embedded servers this configuration needs (none, one or both)."""

    def __init__(self, settings: Settings, *, durable: bool = True) -> None:
        data = DataDir(settings.data_dir)
        self.postgres = (
            None if settings.postgres_is_external else EmbeddedPostgres(data, durable=durable)
        )
        self.valkey = None if settings.redis_is_external else EmbeddedValkey(data)

    @property
    def any(self) -> bool:
        return self.postgres is not None or self.valkey is not None

    def start(self, settings: Settings) -> None:
        if self.valkey is not None:  # instant; starts while nothing else waits on it
            self.valkey.start(timeout=settings.redis_startup_timeout)
        if self.postgres is not None:
            self.postgres.start(timeout=settings.postgres_startup_timeout)

    def started_here(self) -> set[str]:
        """Names ("postgresql", "valkey") of the servers this process started itself."""
        names = {"postgresql": self.postgres, "valkey": self.valkey}
        return {name for name, s in names.items() if s is not None and s.started_here}

    def stop(self, only: set[str] | None = None) -> None:
        """Stop what runs (only the servers named in `only`, when given), PostgreSQL
        last; never raises."""
        for name, server in (("valkey", self.valkey), ("postgresql", self.postgres)):
            if server is None or (only is not None and name not in only):
                continue
            try:
                server.stop()
            except Exception:
                log.exception(
                    "stopping embedded %s failed",
                    type(server).__name__,
                    extra={"action": "embedded_stop_failed"},
                )

    def status(self) -> list[Endpoint]:
        return [s.status() for s in (self.postgres, self.valkey) if s is not None]


@asynccontextmanager
async def phase(name: str, code: ExitCode, report: StartupReport) -> AsyncIterator[None]:
    started = time.perf_counter()
    log.info("phase %s: starting", name, extra={"action": "phase_start", "phase": name})
    try:
        yield
    except StartupError:
        raise
    except StreamorchError as exc:
        problem = getattr(exc, "problem", None) or _problem_of(exc, name)
        raise _failed(name, code, problem, started, report) from exc
    except OSError as exc:
        raise _failed(name, code, _problem_of(exc, name), started, report) from exc
    duration = round((time.perf_counter() - started) * 1000, 1)
    report.phases.append(PhaseRecord(name, duration, "ok"))
    log.info(
        "phase %s: done in %.0f ms",
        name,
        duration,
        extra={"action": "phase_done", "phase": name, "duration_ms": duration},
    )


def _problem_of(exc: BaseException, phase_name: str) -> Problem:
    return Problem(
        f"startup.{phase_name}_failed",
        str(exc) or type(exc).__name__,
        "see the error above; `streamorch doctor` checks every service and setting",
    )


def _failed(
    name: str, code: ExitCode, problem: Problem, started: float, report: StartupReport
) -> StartupError:
    duration = round((time.perf_counter() - started) * 1000, 1)
    report.phases.append(PhaseRecord(name, duration, "failed"))
    log.error(
        "phase %s failed after %.0f ms: %s",
        name,
        duration,
        problem.message,
        extra={
            "action": "phase_failed",
            "phase": name,
            "duration_ms": duration,
            "code": problem.code,
            "exit_code": int(code),
            "fix": problem.fix,
        },
    )
    return StartupError(name, int(code), problem)


async def run_startup(settings: Settings, services: EmbeddedServices) -> StartupReport:
    """Phases 2–6, bounded by APP_STARTUP_TIMEOUT."""
    report = StartupReport()
    try:
        async with asyncio.timeout(settings.app_startup_timeout):
            await _run_phases(settings, services, report)
    except TimeoutError:
        problem = Problem(
            "startup.timeout",
            f"start-up took longer than APP_STARTUP_TIMEOUT={settings.app_startup_timeout:g}s",
            "raise APP_STARTUP_TIMEOUT, or look at which phase was slow in the lines above",
        )
        log.error(problem.message, extra={"action": "startup_timeout", "fix": problem.fix})
        raise StartupError("startup", int(ExitCode.TIMEOUT), problem) from None
    return report


async def _run_phases(
    settings: Settings, services: EmbeddedServices, report: StartupReport
) -> None:
    if services.any:
        async with phase("services", ExitCode.SERVICES, report):
            await asyncio.to_thread(services.start, settings)

    async with phase("postgres", ExitCode.POSTGRES, report):
        target = endpoints.postgres_target(settings)
        if services.postgres is not None:
            await provision.setup_database(settings)
        await waits.wait_for_postgres(target, settings.postgres_startup_timeout)

    report.redis_available = await _wait_redis(settings, report)

    async with phase("migrate", ExitCode.MIGRATE, report):
        applied = await diagnostics.migrate_at(target.conninfo, settings.app_startup_timeout)
        report.migrations_applied = [f"{m.version:04d}_{m.name}" for m in applied]

    async with phase("verify", ExitCode.VERIFY, report):
        await verify_services(settings, redis_expected=report.redis_available)


async def _wait_redis(settings: Settings, report: StartupReport) -> bool:
    if settings.redis_required:
        async with phase("redis", ExitCode.REDIS, report):
            await waits.wait_for_redis(
                endpoints.redis_target(settings), settings.redis_startup_timeout
            )
        return True
    try:
        async with phase("redis", ExitCode.REDIS, report):
            await waits.wait_for_redis(
                endpoints.redis_target(settings), settings.redis_startup_timeout
            )
    except StartupError as exc:
        log.warning(
            "continuing without Redis: the server runs degraded (set REDIS_REQUIRED=true to "
            "refuse to start instead)",
            extra={"action": "redis_degraded", "code": exc.problem.code, "fix": exc.problem.fix},
        )
        report.problems.append(exc.problem)
        return False
    return True


async def verify_services(settings: Settings, *, redis_expected: bool = True) -> dict[str, Probe]:
    """One last check of every service and of the schema version."""
    target = endpoints.postgres_target(settings)
    pg = await waits.probe_postgres(target, settings.db_timeout)
    if not pg.ok:
        assert pg.problem is not None
        raise ServiceError("postgresql", pg.problem)
    version = await diagnostics.schema_version_at(target.conninfo)
    problem = schema_problem(version, migrations.expected_version())
    if problem is not None:
        raise ServiceError("postgresql", problem)
    results = {"postgresql": pg}
    if redis_expected or settings.redis_required:
        rd = await waits.probe_redis(endpoints.redis_target(settings), settings.db_timeout)
        if not rd.ok and settings.redis_required:
            assert rd.problem is not None
            raise ServiceError("redis", rd.problem)
        results["redis"] = rd
    return results
