"""The store's SQL: one loader for every `sql/<file>.sql`, by its `-- name: …` headers.

`queries.sql` holds the engine's statements; `compat.sql`, `dashboard.sql`,
`retention.sql` and `health.sql` those of their modules.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load(file: str = "queries") -> dict[str, str]:
    """Every statement of `sql/<file>.sql`, by name."""
    text = (resources.files("streamorch.store") / "sql" / f"{file}.sql").read_text()
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def _all() -> dict[str, str]:
    return load("queries")


def sql(name: str, file: str = "queries") -> str:
    return load(file)[name]
