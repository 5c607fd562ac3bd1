"""`streamorch simulate`: a fleet of in-process SDK workers against a running server."""

from __future__ import annotations

import asyncio

import typer


def simulate(
    workers: int = typer.Option(50, "--workers", min=1, help="Workers at the start."),
    streams: int = typer.Option(2000, "--streams", min=1, help="Streams to create."),
    kill: int = typer.Option(5, "--kill", min=0, help="Workers to kill after convergence."),
    join: int = typer.Option(5, "--join", min=0, help="Workers to add after the failover."),
    duration: float = typer.Option(
        60.0, "--duration", help="Seconds the whole run lasts at least."
    ),
    capacity: int = typer.Option(
        None, "--capacity", min=1, help="Per worker; default fits every stream on the survivors."
    ),
    kill_mode: str = typer.Option(
        "crash", "--kill-mode", help="crash (streams stop at once) or partition (self-fencing)."
    ),
    settle_timeout: float = typer.Option(120.0, "--settle-timeout"),
    seed: int = typer.Option(None, "--seed", help="Chooses the workers to kill."),
    server: str = typer.Option(
        "http://127.0.0.1:8001",
        "--server",
        envvar="STREAMORCH_SERVER",
        help="Orchestrator URL; several, comma-separated, are tried in turn.",
    ),
    token: str = typer.Option(
        None, "--token", envvar=["STREAMORCH_ADMIN_TOKEN", "STREAMORCH_TOKEN"], help="Admin token."
    ),
) -> None:
    """Run SDK workers in this process, kill and add some, report what they saw.

    Prints convergence, failover p50/p99, join moves versus the optimum, balance, and
    duplicate-owner time (goal 0). Exits 1 if a stream ever had two owners or did not
    converge.
    """
    from streamorch.client import ClientError
    from streamorch.client.simulate import simulate as run

    try:
        report = asyncio.run(
            run(
                server,
                token=token,
                workers=workers,
                streams=streams,
                kill=kill,
                join=join,
                duration=duration,
                capacity=capacity,
                kill_mode=kill_mode,
                settle_timeout=settle_timeout,
                seed=seed,
                say=lambda line: typer.echo(line, err=True),
            )
        )
    except (ValueError, ClientError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for line in report.lines():
        typer.echo(line)
    for overlap in report.duplicates[:20]:
        typer.echo(f"  two owners: {overlap}")
    raise typer.Exit(0 if report.ok else 1)
