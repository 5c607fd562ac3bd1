"""The `streamorch` command.

Heavy imports (FastAPI, psycopg, redis) happen inside the commands that need
them, so quick commands stay quick.
"""

from __future__ import annotations

import asyncio
import sys

import typer

from streamorch.cli import admin as admin_cli
from streamorch.cli import doctor as doctor_cli
from streamorch.cli import services as services_cli
from streamorch.cli import simulate as simulate_cli
from streamorch.cli import worker as worker_cli
from streamorch.cli.common import fail, load

app = typer.Typer(
    name="streamorch",
    help="Stream Orchestrator: keeps every enabled stream running on exactly one healthy worker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(services_cli.app, name="services")
wait_app = typer.Typer(
    help="Wait until a service answers (for scripts and init containers).", no_args_is_help=True
)
app.add_typer(wait_app, name="wait")
config_app = typer.Typer(help="Check or show the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.command("doctor")(doctor_cli.doctor)
admin_cli.register(app)  # streams …, workers …, status, events
app.command("worker")(worker_cli.worker)
app.command("simulate")(simulate_cli.simulate)


@app.command()
def serve(
    keep_services: bool = typer.Option(
        False,
        "--keep-services",
        envvar="STREAMORCH_KEEP_SERVICES",
        help="Leave embedded PostgreSQL/Valkey running when the server stops.",
    ),
) -> None:
    """Run the start-up sequence, then serve the API until SIGTERM/SIGINT."""
    from streamorch.server.serve import serve as run

    raise typer.Exit(run(load(), keep_services=keep_services))


@app.command()
def startup() -> None:
    """Run the start-up sequence (services, waits, migrations, checks) and exit.

    Embedded services are left running. Useful as an init container or before
    `serve` in scripts that sequence phases themselves.
    """
    from streamorch.domain.errors import StartupError
    from streamorch.ops.startup import EmbeddedServices, run_startup

    settings = load()
    try:
        asyncio.run(run_startup(settings, EmbeddedServices(settings)))
    except StartupError as exc:
        raise typer.Exit(exc.exit_code) from None


@app.command()
def migrate() -> None:
    """Apply pending database migrations (safe to run from several replicas at once)."""
    from streamorch.backing import endpoints
    from streamorch.domain.errors import StreamorchError
    from streamorch.ops.startup import ExitCode
    from streamorch.store import diagnostics, migrations

    settings = load()

    async def run() -> list[str]:
        target = endpoints.postgres_target(settings)
        applied = await diagnostics.migrate_at(target.conninfo)
        return [f"{m.version:04d}_{m.name}" for m in applied]

    try:
        applied = asyncio.run(run())
    except StreamorchError as exc:
        raise fail(exc, int(ExitCode.MIGRATE)) from None
    typer.echo(
        f"applied {len(applied)} migration(s)"
        + (
            f": {', '.join(applied)}"
            if applied
            else f"; schema is at version {migrations.expected_version()}"
        )
    )


@wait_app.command("postgres")
def wait_postgres(
    timeout: float = typer.Option(None, help="Seconds; default POSTGRES_STARTUP_TIMEOUT."),
) -> None:
    """Wait until PostgreSQL accepts connections and answers SELECT 1."""
    from streamorch.backing import endpoints, waits
    from streamorch.domain.errors import ServiceError
    from streamorch.ops.startup import ExitCode

    settings = load()
    try:
        result = asyncio.run(
            waits.wait_for_postgres(
                endpoints.postgres_target(settings), timeout or settings.postgres_startup_timeout
            )
        )
    except ServiceError as exc:
        raise fail(exc, int(ExitCode.POSTGRES)) from None
    typer.echo(
        f"postgresql ready: version {result.version}, {result.latency_ms} ms, "
        f"{result.attempts} attempt(s)"
    )


@wait_app.command("redis")
def wait_redis(
    timeout: float = typer.Option(None, help="Seconds; default REDIS_STARTUP_TIMEOUT."),
) -> None:
    """Wait until Redis answers PING."""
    from streamorch.backing import endpoints, waits
    from streamorch.domain.errors import ServiceError
    from streamorch.ops.startup import ExitCode

    settings = load()
    try:
        result = asyncio.run(
            waits.wait_for_redis(
                endpoints.redis_target(settings), timeout or settings.redis_startup_timeout
            )
        )
    except ServiceError as exc:
        raise fail(exc, int(ExitCode.REDIS)) from None
    typer.echo(
        f"redis ready: version {result.version}, {result.latency_ms} ms, "
        f"{result.attempts} attempt(s)"
    )


@app.command()
def verify() -> None:
    """Check PostgreSQL, the schema version and Redis once; exit non-zero on a problem."""
    from streamorch.domain.errors import StreamorchError
    from streamorch.ops.startup import ExitCode, verify_services

    settings = load()
    try:
        results = asyncio.run(verify_services(settings))
    except StreamorchError as exc:
        raise fail(exc, int(ExitCode.VERIFY)) from None
    for name, result in results.items():
        state = "ok" if result.ok else f"DEGRADED: {result.problem}"
        typer.echo(f"{name}: {state}")


@config_app.command("check")
def config_check() -> None:
    """Validate the configuration; list every problem with its fix, and warnings."""
    from streamorch.config import token_warnings

    settings = load(log=False)
    warnings = token_warnings(settings)
    for problem in warnings:
        typer.echo(f"warning: {problem.message}; {problem.fix}", err=True)
    suffix = f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""
    typer.echo(f"configuration is valid{suffix}")


@config_app.command("show")
def config_show() -> None:
    """Print every setting (secrets only as set/unset)."""
    settings = load(log=False)
    for name, value in settings.describe().items():
        typer.echo(f"{name}={value}")


@app.command()
def healthcheck(
    url: str = typer.Option(None, help="Default: http://127.0.0.1:$ORCHESTRATOR_PORT/health"),
    timeout: float = typer.Option(3.0),
) -> None:
    """Exit 0 when the server's /health answers 200 (for container health checks)."""
    import os
    import urllib.request

    port = os.environ.get("ORCHESTRATOR_PORT", "8001")
    target = url or f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:  # noqa: S310
            ok = response.status == 200
    except OSError as exc:
        typer.echo(f"unhealthy: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
