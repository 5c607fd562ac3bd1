"""`streamorch services start|stop|status`: the embedded PostgreSQL and Valkey."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # imported where used, so `streamorch --help` stays quick
    from streamorch.ops.startup import EmbeddedServices

app = typer.Typer(help="Manage the embedded PostgreSQL and Valkey servers.", no_args_is_help=True)


@app.command()
def start() -> None:
    """Start the embedded servers this configuration needs, and create role and database."""
    from streamorch.backing import provision
    from streamorch.cli.common import fail, load
    from streamorch.domain.errors import StreamorchError
    from streamorch.ops.startup import EmbeddedServices, ExitCode

    settings = load()
    services = EmbeddedServices(settings)
    if not services.any:
        typer.echo("PostgreSQL and Redis are external: nothing to start")
        return
    try:
        services.start(settings)
        if services.postgres is not None:
            asyncio.run(provision.setup_database(settings))
    except StreamorchError as exc:
        raise fail(exc, int(ExitCode.SERVICES)) from None
    _print(services)


@app.command()
def stop() -> None:
    """Stop the embedded servers."""
    from streamorch.backing.instance import InstanceLock
    from streamorch.cli.common import load
    from streamorch.ops.startup import EmbeddedServices

    settings = load()
    holder = InstanceLock(settings.data_dir).holder()
    if holder is not None:
        typer.echo(
            f"error: an orchestrator is running on these servers (pid {holder.pid}, "
            f"{holder.address}): stop it first (kill -TERM {holder.pid}); it stops the "
            "servers it started itself",
            err=True,
        )
        raise typer.Exit(1)
    services = EmbeddedServices(settings)
    services.stop()
    _print(services)


@app.command()
def status() -> None:
    """Show whether the embedded servers run, and where. Exit 1 if one is down."""
    from streamorch.cli.common import load
    from streamorch.ops.startup import EmbeddedServices

    settings = load(log=False)
    services = EmbeddedServices(settings)
    if not services.any:
        typer.echo("PostgreSQL and Redis are external: no embedded service")
        return
    if not _print(services):
        raise typer.Exit(1)


def _print(services: EmbeddedServices) -> bool:
    all_up = True
    for endpoint in services.status():
        state = "running" if endpoint.running else "stopped"
        all_up &= endpoint.running
        typer.echo(f"{endpoint.name}: {state} port={endpoint.port} pid={endpoint.pid}")
    return all_up
