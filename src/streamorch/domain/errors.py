"""The error tree of the orchestrator.

    StreamorchError
    ├── NotFound                no such stream or worker (404)
    ├── Conflict                the request clashes with the current state (409)
    │   ├── Superseded          a newer incarnation of this worker registered
    │   └── LeaseExpired        the worker's lease ran out; it must register again
    ├── InvalidInput            the request is malformed (422); says what and how to fix
    ├── Forbidden               the caller may not act for this worker (403)
    ├── ConfigurationError      invalid settings; carries every problem found
    ├── ServiceError            a backing service cannot be used
    │   ├── ServiceUnavailable  did not answer in time (carries the last problem)
    │   └── EmbeddedServiceError  an embedded server failed to start or stop
    ├── StoreError              a database operation failed (driver error as __cause__)
    │   ├── StoreUnavailable    the database does not answer (connection, pool timeout)
    │   ├── UnstorableValue     the database refused a value (NUL character, out of range)
    │   ├── TransactionConflict  rolled back to resolve a conflict; safe to run again
    │   └── MigrationError
    └── StartupError            a start-up phase failed; carries phase and exit code

Exceptions carry fields, not just text, so callers (CLI, health, logs) can render
them for their audience.
"""

from __future__ import annotations

from streamorch.domain.problems import Problem


class StreamorchError(Exception):
    """Root of every error the orchestrator raises on purpose."""


class NotFound(StreamorchError):
    def __init__(self, what: str, key: str) -> None:
        self.what = what
        self.key = key
        self.code = f"{what}_not_found"
        super().__init__(f"no {what} {key!r}")


class Conflict(StreamorchError):
    code = "conflict"

    def __init__(self, message: str, *, code: str | None = None, **details: object) -> None:
        self.code = code or self.code
        self.details = details
        super().__init__(message)


class Superseded(Conflict):
    code = "superseded"


class LeaseExpired(Conflict):
    code = "lease_expired"


class InvalidInput(StreamorchError):
    def __init__(self, message: str, *, code: str = "invalid_input", **details: object) -> None:
        self.code = code
        self.details = details
        super().__init__(message)


class Forbidden(StreamorchError):
    def __init__(self, message: str, *, code: str = "forbidden", **details: object) -> None:
        self.code = code
        self.details = details
        super().__init__(message)


class ConfigurationError(StreamorchError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p.message}: {p.fix}" for p in problems)
        super().__init__(f"{len(problems)} configuration problem(s):\n{lines}")


class ServiceError(StreamorchError):
    def __init__(self, service: str, problem: Problem) -> None:
        self.service = service
        self.problem = problem
        super().__init__(f"{service}: {problem.message}")


class ServiceUnavailable(ServiceError):
    def __init__(self, service: str, problem: Problem, *, attempts: int, waited_s: float) -> None:
        super().__init__(service, problem)
        self.attempts = attempts
        self.waited_s = waited_s


class EmbeddedServiceError(ServiceError):
    pass


class StoreError(StreamorchError):
    pass


class StoreUnavailable(StoreError):
    """The database cannot be reached or gave no connection in time: retry shortly."""


class UnstorableValue(StoreError):
    """The database refused a value the request carried (validation missed a rule)."""


class TransactionConflict(StoreError):
    """PostgreSQL rolled the transaction back to resolve a conflict (deadlock, serialization
    failure): nothing of it remains, and running it again is correct."""


class MigrationError(StoreError):
    pass


class StartupError(StreamorchError):
    def __init__(self, phase: str, exit_code: int, problem: Problem) -> None:
        self.phase = phase
        self.exit_code = exit_code
        self.problem = problem
        super().__init__(f"start-up failed in phase '{phase}': {problem.message}")
