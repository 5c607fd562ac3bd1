"""Configuration: aliases, defaults, every problem reported at once, no secret echoed."""

from __future__ import annotations

import pytest

from streamorch.config import load_settings
from streamorch.domain.errors import ConfigurationError


def test_no_configuration_means_embedded_services():
    settings = load_settings({})
    assert not settings.postgres_is_external
    assert not settings.redis_is_external
    assert settings.orchestrator_port == 8001
    assert settings.postgres_startup_timeout == 60


@pytest.mark.parametrize(
    ("alias", "field", "value"),
    [
        ("POSTGRES_HOST", "db_host", "db.example"),
        ("POSTGRES_PORT", "db_port", 6543),
        ("POSTGRES_DB", "db_name", "orch"),
        ("POSTGRES_USER", "db_user", "svc"),
    ],
)
def test_postgres_aliases(alias, field, value):
    settings = load_settings({alias: str(value)})
    assert getattr(settings, field) == value


def test_db_names_win_over_postgres_aliases():
    assert load_settings({"DB_HOST": "a", "POSTGRES_HOST": "b"}).db_host == "a"


def test_empty_values_count_as_unset():
    settings = load_settings({"DB_HOST": "", "REDIS_URL": " "})
    assert settings.db_host is None
    assert settings.redis_url is None


def test_every_problem_is_reported_at_once():
    env = {
        "POSTGRES_STARTUP_TIMEOUT": "abc",
        "DB_PORT": "x",
        "LOG_FORMAT": "xml",
        "REDIS_REQUIRED": "maybe",
        "ORCHESTRATOR_PORT": "70000",
    }
    with pytest.raises(ConfigurationError) as caught:
        load_settings(env)
    problems = {p.context["variable"]: p for p in caught.value.problems}
    assert set(problems) == set(env)
    timeout = problems["POSTGRES_STARTUP_TIMEOUT"]
    assert (
        timeout.message == "POSTGRES_STARTUP_TIMEOUT='abc': expected seconds as a number, e.g. 60"
    )
    assert "default 60" in timeout.fix
    assert "'console' or 'structured'" in problems["LOG_FORMAT"].message


def test_secrets_never_appear_in_problems_or_description():
    env = {"DB_PASSWORD": "hunter2", "DATABASE_URL": "mysql://u:hunter2@h/d"}
    with pytest.raises(ConfigurationError) as caught:
        load_settings(env)
    assert "hunter2" not in str(caught.value)
    described = load_settings({"DB_PASSWORD": "hunter2", "DB_HOST": "h"}).describe()
    assert described["DB_PASSWORD"] == "set"
    assert described["DATABASE_URL"] == "unset"
    assert "hunter2" not in repr(described)


def test_cross_field_problems():
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"LEASE_TTL": "2.5", "HEARTBEAT_INTERVAL": "2.5", "REDIS_URL": "http://x"})
    codes = sorted(p.code for p in caught.value.problems)
    assert codes == ["config.invalid_value", "config.lease_too_short"]


def test_reconcile_interval_must_be_well_under_the_lease():
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"RECONCILE_INTERVAL": "6", "LEASE_TTL": "10"})
    assert [p.code for p in caught.value.problems] == ["config.reconcile_too_slow"]
