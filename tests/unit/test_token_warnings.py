"""`streamorch config check` warns on tokens that protect little; it still exits 0."""

from __future__ import annotations

from typer.testing import CliRunner

from streamorch.cli.main import app
from streamorch.config import token_warnings

STRONG_A = "Zq3v9LrT0pW2mX7kH5nB8cJ4"
STRONG_B = "Yh6tR1sE9uI3oP0aS2dF7gK5"


def codes(make_settings, **env: str) -> list[str]:
    return [p.code for p in token_warnings(make_settings(**env))]


def test_weak_identical_and_half_set_tokens_are_named(make_settings) -> None:
    assert codes(make_settings) == []  # no tokens: warn_if_exposed covers that case
    assert (
        codes(make_settings, STREAMORCH_ADMIN_TOKEN=STRONG_A, STREAMORCH_WORKER_TOKEN=STRONG_B)
        == []
    )
    assert codes(
        make_settings, STREAMORCH_ADMIN_TOKEN="abcde", STREAMORCH_WORKER_TOKEN="abcde"
    ) == [
        "config.weak_token",
        "config.weak_token",
        "config.same_tokens",
    ]
    assert codes(
        make_settings, STREAMORCH_ADMIN_TOKEN="a" * 40, STREAMORCH_WORKER_TOKEN=STRONG_B
    ) == ["config.weak_token"]  # long but made of one character
    assert codes(
        make_settings, STREAMORCH_ADMIN_TOKEN=STRONG_A, STREAMORCH_WORKER_TOKEN=STRONG_A
    ) == ["config.same_tokens"]
    assert codes(make_settings, STREAMORCH_WORKER_TOKEN=STRONG_B) == ["config.admin_api_open"]


def test_config_check_prints_the_warnings_and_still_passes(data_dir) -> None:
    env = {
        "STREAMORCH_DATA_DIR": str(data_dir),
        "STREAMORCH_ADMIN_TOKEN": "hello",
        "STREAMORCH_WORKER_TOKEN": "hello",
    }
    result = CliRunner().invoke(app, ["config", "check"], env=env)
    assert result.exit_code == 0, result.output
    assert "configuration is valid (3 warnings)" in result.stdout
    assert "STREAMORCH_ADMIN_TOKEN is weak (5 characters" in result.stderr
    assert "are the same" in result.stderr
    assert "hello" not in result.stdout + result.stderr  # never print a secret
