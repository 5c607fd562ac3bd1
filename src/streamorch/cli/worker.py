"""`streamorch worker`: the reference worker, one supervised command per assigned stream."""

from __future__ import annotations

import asyncio
import os
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


EXIT_OK = 0  # drained (or the drain timed out): every stream stopped and reported
EXIT_FAILED = 1  # the server refused the worker for good (wrong URL path, token)
EXIT_USAGE = 2  # an option can never work (no scheme in the URL, a bad label)
EXIT_STOPPED_NOW = 4  # a second signal stopped every stream before the drain finished


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
    token: str = typer.Option(
        None,
        "--token",
        envvar="STREAMORCH_WORKER_TOKEN",
        help="The server's worker token (the admin token works too).",
        show_envvar=True,
    ),
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
    """Run one process per assigned stream.

    SIGTERM or Ctrl-C drains, deregisters and exits 0; a second signal stops every
    stream at once and exits 4. Exit 1: the server refused this worker (wrong URL path,
    missing or wrong token); exit 2: an option can never work.
    """
    from streamorch.client import AsyncWorker, ClientError
    from streamorch.client.supervisor import Supervisor
    from streamorch.logs import configure_logging

    configure_logging(log_level.upper())
    try:
        supervisor = Supervisor(command, grace=grace, max_backoff=max_backoff)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--exec") from None
    label_map = parse_labels(labels)
    try:
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
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if token is None and os.environ.get("STREAMORCH_TOKEN"):
        typer.echo(
            "warning: STREAMORCH_TOKEN is the admin CLI's token and is not read here; "
            "set STREAMORCH_WORKER_TOKEN (or pass --token) to send a token",
            err=True,
        )

    async def main() -> None:
        # A self-fencing stop or a "stop now" must not wait out the grace period.
        supervisor.urgent = lambda: instance.fenced or instance.stopping_now
        instance.install_signal_handlers()
        try:
            await instance.run()
        finally:
            await supervisor.stop_all()

    try:
        asyncio.run(main())
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    if instance.interrupted:
        raise typer.Exit(EXIT_STOPPED_NOW)
