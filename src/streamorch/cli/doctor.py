"""`streamorch doctor`: render the report of `ops.doctor` for people or machines."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from streamorch.ops.doctor import Report

_STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
_LABELS = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def doctor(
    json_output: bool = typer.Option(
        False,
        "--json",
        envvar="STREAMORCH_DOCTOR_JSON",
        help="Print the report as JSON (for scripts and monitoring).",
    ),
) -> None:
    """Check configuration, PostgreSQL, Redis, embedded servers, API port and data directory.

    Prints every setting (secrets only as set/unset) and each problem with what to do about it. An invalid configuration does not stop the checks that do not depend on it.

    Exit codes: 0 no check failed (warnings are allowed, e.g. migrations the server applies at start-up); 10 only the configuration is invalid; 1 any other check failed.
    """
    from streamorch.ops import doctor as core

    report = asyncio.run(core.run())
    if json_output:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        render(report)
    raise typer.Exit(report.exit_code)


def render(report: Report) -> None:
    """Aligned text; colours only on a terminal, so it reads the same in a log file."""
    from rich.console import Console

    console = Console(highlight=False, emoji=False)
    with console.capture() as captured:
        _print(console, report)
    # Grid cells are padded to the column width: drop that padding from the line ends.
    typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _print(console: Console, report: Report) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(Text("Configuration", style="bold"))
    settings = Table.grid(padding=(0, 2))
    settings.add_column(no_wrap=True)
    settings.add_column()
    for name, value in report.configuration.items():
        settings.add_row(Text(f"  {name}"), Text(value, style="red" if value == "invalid" else ""))
    console.print(settings)
    console.print()

    console.print(Text("Checks", style="bold"))
    checks = Table.grid(padding=(0, 2))
    checks.add_column(no_wrap=True)
    checks.add_column(no_wrap=True)
    checks.add_column()
    for check in report.checks:
        body = Text(check.detail)
        if check.problem is not None:
            body.append("\nfix: ", style="bold")
            body.append(check.problem.fix)
            body.append(f"\n[{check.problem.code}]", style="dim")
        checks.add_row(
            Text(f"  {_LABELS[check.status]}", style=_STYLES[check.status]),
            Text(check.name),
            body,
        )
    console.print(checks)
    console.print()

    failed = sum(c.status == "fail" for c in report.checks)
    warned = sum(c.status == "warn" for c in report.checks)
    if failed:
        summary = f"{failed} problem(s), {warned} warning(s): exit {report.exit_code}"
        console.print(Text(summary, style="bold red"))
    elif warned:
        console.print(Text(f"no problems, {warned} warning(s)", style="yellow"))
    else:
        console.print(Text("everything is fine", style="green"))
