"""`streamorch worker`: the reference worker, one supervised command per assigned stream."""

from __future__ import annotations

import asyncio
import socket

import typer

SERVER_HELP = "Orchestrator URL; several, comma-separated, are tried in turn."


def parse_labels(values: list[str]) -> dict[str, str]:
    """`["region=eu", "tier=a,gpu=1"]` → a dict; exits 2 on a pair without `=`."""
    labels: dict[str, str] = {}
    for value in values:
        for pair in filter(None, (p.strip() for p in value.split(","))):
            key, sep, val = pair.partition("=")
            if not sep or not key:
                raise typer.BadParameter(f"label {pair!r} is not KEY=VALUE", param_hint="--labels")
            labels[key.strip()] = val.strip()
    return labels


def worker(
    command: str = typer.Option(
        ...,
        "--exec",
        envvar="STREAMORCH_WORKER_EXEC",
        help="Command per stream; {url}, {key} and {token} are replaced in each argument.",
    ),
    name: str = typer.Option(
        None, "--name", envvar="STREAMORCH_WORKER_NAME", help="Default: the host name."
    ),
    capacity: int = typer.Option(
        20, "--capacity", min=1, envvar="STREAMORCH_WORKER_CAPACITY", help="Capacity units."
    ),
    labels: list[str] = typer.Option(
        [], "--labels", envvar="STREAMORCH_WORKER_LABELS", help="KEY=VALUE[,KEY=VALUE…]."
    ),
    server: str = typer.Option(
        "http://127.0.0.1:8001", "--server", envvar="STREAMORCH_SERVER", help=SERVER_HELP
    ),
    token: str = typer.Option(None, "--token", envvar="STREAMORCH_TOKEN", help="API token."),
    grace: float = typer.Option(
        10.0,
        "--grace",
        envvar="STREAMORCH_WORKER_GRACE",
        help="Seconds between SIGTERM and SIGKILL.",
    ),
    drain_timeout: float = typer.Option(
        60.0,
        "--drain-timeout",
        envvar="STREAMORCH_DRAIN_TIMEOUT",
        help="On SIGTERM, seconds to wait for the streams to move away before stopping them.",
    ),
    max_backoff: float = typer.Option(
        30.0, "--max-backoff", help="Longest wait before restarting a crashed command."
    ),
    secret_file: str = typer.Option(
        None,
        "--secret-file",
        envvar="STREAMORCH_WORKER_SECRET_FILE",
        help="Keep the worker's secret here, so that a restart within the lease keeps its streams.",
    ),
    log_level: str = typer.Option("INFO", "--log-level", envvar="LOG_LEVEL"),
) -> None:
    """Run one process per assigned stream; SIGTERM drains, deregisters and exits 0."""
    from streamorch.client import AsyncWorker
    from streamorch.client.supervisor import Supervisor
    from streamorch.logs import configure_logging

    configure_logging(log_level.upper())
    try:
        supervisor = Supervisor(command, grace=grace, max_backoff=max_backoff)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--exec") from None
    label_map = parse_labels(labels)

    async def main() -> None:
        instance = AsyncWorker(
            server,
            name=name or socket.gethostname(),
            capacity=capacity,
            labels=label_map,
            token=token,
            on_assign=supervisor.on_assign,
            on_revoke=supervisor.on_revoke,
            metrics=supervisor.metrics,
            drain_timeout=drain_timeout,
            secret_file=secret_file,
        )
        # A self-fencing stop must finish before the lease can end: no long grace then.
        supervisor.urgent = lambda: instance.fenced
        instance.install_signal_handlers()
        try:
            await instance.run()
        finally:
            await supervisor.stop_all()

    asyncio.run(main())
