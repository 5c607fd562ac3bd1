"""What every command shares: loading the settings, and failing with a problem's words."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from streamorch.config import Settings


def load(*, log: bool = True) -> Settings:
    """Settings from the environment; exits 10 listing every problem."""
    from streamorch.config import load_settings
    from streamorch.domain.errors import ConfigurationError
    from streamorch.logs import configure_logging
    from streamorch.ops.startup import ExitCode

    try:
        settings = load_settings()
    except ConfigurationError as exc:
        configure_logging()
        typer.echo(f"configuration invalid ({len(exc.problems)} problem(s)):", err=True)
        for problem in exc.problems:
            typer.echo(f"  - {problem.message}\n    fix: {problem.fix}", err=True)
        raise typer.Exit(int(ExitCode.CONFIG)) from None
    if log:
        configure_logging(settings.log_level, settings.log_format)
    return settings


def fail(exc: Exception, code: int) -> typer.Exit:
    problem = getattr(exc, "problem", None)
    if problem is not None:
        typer.echo(f"error: {problem.message}\n  fix: {problem.fix}", err=True)
    else:
        typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code)
