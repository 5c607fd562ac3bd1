"""One look at one thing the orchestrator depends on, and what it found.

The same `Probe` answers every question about a backing service or the host: the waits
of start-up (backing/waits.py), the pool's own check (store/database.py), `verify`, the
checks of `streamorch doctor`, and `/health` and `/ready` (ops/health.py). Each renders
it in its own shape: `as_dict` for doctor's JSON, `as_check` for the health endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from streamorch.domain.problems import Problem

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Probe:
    name: str  # the service or the check: "postgresql", "redis", "postgresql_schema", …
    status: Status
    detail: str = ""  # one line for people
    problem: Problem | None = None
    data: dict[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None
    version: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def passed(
        cls,
        name: str,
        latency_ms: float | None = None,
        *,
        version: str | None = None,
        detail: str = "",
        data: dict[str, Any] | None = None,
    ) -> Probe:
        return cls(name, "ok", detail, None, data or {}, latency_ms, version)

    @classmethod
    def failed(cls, name: str, problem: Problem, data: dict[str, Any] | None = None) -> Probe:
        return cls(name, "fail", problem.message, problem, data or {})

    def as_dict(self) -> dict[str, Any]:
        """The shape of a check in `streamorch doctor --json`."""
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "problem": self.problem.as_dict() if self.problem else None,
            "data": self.data,
        }

    def as_check(self) -> dict[str, Any]:
        """The shape of a service in `/health` and `/ready` (API.md)."""
        if self.problem is None:
            return {
                "status": "ready",
                "latency_ms": self.latency_ms,
                "details": self.data,
                "error": None,
                "suggestion": None,
            }
        return {
            "status": "error",
            "latency_ms": None,
            "details": {**self.data, "code": self.problem.code},
            "error": self.problem.message,
            "suggestion": self.problem.fix,
        }


def schema_problem(
    version: int,
    expected: int,
    *,
    where: str = "schema",
    fix: str = "run `streamorch migrate`",
    too_new_fix: str = "run the release that migrated it, or a newer one",
) -> Problem | None:
    """None when the schema is at the version this release expects; else what is wrong."""
    if version < expected:
        return Problem(
            "postgres.schema_outdated",
            f"{where} is at version {version}, this orchestrator needs {expected}",
            fix,
        )
    if version > expected:
        return Problem(
            "postgres.schema_too_new",
            f"{where} is at version {version}, newer than this orchestrator knows ({expected})",
            too_new_fix,
        )
    return None
