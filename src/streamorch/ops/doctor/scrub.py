"""The report of `streamorch doctor` never holds a secret: every password, token and URL
known to the run is replaced by `***` in all of its text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from streamorch.backing.endpoints import conninfo_password as _conninfo_password_of
from streamorch.domain.probes import Probe
from streamorch.domain.problems import Problem
from streamorch.ops.doctor.checks import FIELD_BY_ENV

SECRET_FIELDS = frozenset(
    {"database_url", "redis_url", "db_password", "redis_password", "worker_token", "admin_token"}
)
MIN_SCRUB_LEN = 4  # shorter "secrets" would mangle every message they happen to occur in


def secrets_in(env: Mapping[str, str]) -> set[str]:
    found: set[str] = set()
    for env_name, name in FIELD_BY_ENV.items():
        value = (env.get(env_name) or "").strip()
        if name not in SECRET_FIELDS or not value:
            continue
        found.add(value)
        found.update(url_password(value))
        if name == "database_url":
            found.update(conninfo_password(value))
    return found


def url_password(url: str) -> set[str]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return set()
    return {password, unquote(password)} if password else set()


def conninfo_password(conninfo: str) -> set[str]:
    password = _conninfo_password_of(conninfo)
    return {password} if password else set()


def scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub(v, secrets) for v in value)
    return value


def ordered(secrets: set[str]) -> list[str]:
    """Longest first, so a password inside a URL does not leave the rest of the URL behind."""
    return sorted((s for s in secrets if len(s) >= MIN_SCRUB_LEN), key=len, reverse=True)


def scrub_probe(check: Probe, secrets: list[str]) -> Probe:
    problem = check.problem
    if problem is not None:
        problem = Problem(
            problem.code,
            scrub(problem.message, secrets),
            scrub(problem.fix, secrets),
            scrub(problem.context, secrets),
        )
    return Probe(
        check.name,
        check.status,
        scrub(check.detail, secrets),
        problem,
        scrub(check.data, secrets),
    )
