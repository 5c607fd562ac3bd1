"""Problems: what is wrong, in words an operator can act on.

A `Problem` is the unit of every diagnosis the product makes — configuration
validation, service waits, `streamorch doctor`, health endpoints. Each carries a
stable `code` (documented in docs/troubleshooting.md), a one-line `message` that
says what is wrong and a `fix` that says what to try.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    fix: str
    context: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.message} — {self.fix}"

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "fix": self.fix, **self.context}
