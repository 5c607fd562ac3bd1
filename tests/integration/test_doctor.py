"""`streamorch doctor`: the specific problem, named, for each thing that can be wrong."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import pytest
from psycopg.conninfo import conninfo_to_dict

from streamorch.backing import provision
from streamorch.config import load_settings
from streamorch.ops import doctor
from streamorch.ops.startup import EmbeddedServices
from streamorch.store import migrations

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_credentials(url: str, user: str | None = None, password: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{user or parts.username}:{password or parts.password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def password_of(conninfo: str) -> str:
    password = conninfo_to_dict(conninfo).get("password")
    assert password, "the test server must use a password"
    return str(password)


@pytest.fixture
def env(data_dir: Path) -> dict[str, str]:
    """A base environment; the API port is free so the api_port check is deterministic."""
    return {"STREAMORCH_DATA_DIR": str(data_dir), "ORCHESTRATOR_PORT": str(closed_port())}


@pytest.fixture
def healthy(env, postgres_server, database, redis_url) -> dict[str, str]:
    return {**env, "DATABASE_URL": postgres_server.url(database), "REDIS_URL": redis_url}


def names(report: doctor.Report) -> list[str]:
    return [c.name for c in report.checks]


# -- a healthy configuration -----------------------------------------------------------------


async def test_healthy_configuration_is_all_ok(healthy):
    report = await doctor.run(healthy)
    assert names(report) == [
        "configuration",
        "postgresql",
        "postgresql_schema",
        "redis",
        "api_port",
    ]
    assert [c.status for c in report.checks] == ["ok"] * 5, report.as_dict()
    assert report.problems == []
    assert report.exit_code == 0
    assert report.get("postgresql").data["version"]
    assert report.get("redis").data["version"]
    version = migrations.expected_version()
    assert report.get("postgresql_schema").data == {"current": version, "expected": version}
    assert report.configuration["DATABASE_URL"] == "set"


async def test_outdated_schema_is_a_warning_not_a_failure(env, postgres_server, empty_database):
    report = await doctor.run({**env, "DATABASE_URL": postgres_server.url(empty_database)})
    check = report.get("postgresql_schema")
    assert check.status == "warn"
    assert check.problem is not None
    assert check.problem.code == "postgres.schema_outdated"
    assert empty_database in check.problem.message
    assert "streamorch migrate" in check.problem.fix


# -- PostgreSQL ------------------------------------------------------------------------------


async def test_postgres_not_running(env, redis_url):
    port = closed_port()
    url = f"postgresql://streamorch:secret@127.0.0.1:{port}/streamorch"
    report = await doctor.run({**env, "DATABASE_URL": url, "REDIS_URL": redis_url})
    check = report.get("postgresql")
    assert check.status == "fail"
    assert check.problem.code == "postgres.unreachable"
    assert f"127.0.0.1:{port}" in check.problem.message
    assert "postgresql_schema" not in names(report)
    assert report.get("redis").status == "ok"  # one failure does not hide the others
    assert report.exit_code == 1


async def test_wrong_password(env, postgres_server, database):
    wrong = "not-the-password-4711"
    url = with_credentials(postgres_server.url(database), password=wrong)

    honest = await doctor.run({**env, "DATABASE_URL": url})
    problem = honest.get("postgresql").problem
    assert problem.code == "postgres.auth_failed"
    assert "may not exist" in problem.fix  # without a superuser it cannot know which

    report = await doctor.run(
        {**env, "DATABASE_URL": url}, superuser_conninfo=postgres_server.admin_conninfo
    )
    problem = report.get("postgresql").problem
    assert problem.code == "postgres.auth_failed"
    assert "the role exists" in problem.message
    assert f"'{urlsplit(url).username}'" in problem.message
    for shown in (honest, report):
        text = json.dumps(shown.as_dict())
        assert wrong not in text
        assert password_of(postgres_server.admin_conninfo) not in text


async def test_role_missing(env, postgres_server, database):
    role = f"no_such_role_{uuid.uuid4().hex[:8]}"
    url = with_credentials(postgres_server.url(database), user=role, password="whatever")

    report = await doctor.run(
        {**env, "DATABASE_URL": url}, superuser_conninfo=postgres_server.admin_conninfo
    )
    problem = report.get("postgresql").problem
    assert problem.code == "postgres.role_missing"
    assert f"role '{role}' does not exist" in problem.message
    assert "CREATE ROLE" in problem.fix

    # Without a superuser, PostgreSQL's answer is all there is: the combined message.
    honest = await doctor.run({**env, "DATABASE_URL": url})
    assert honest.get("postgresql").problem.code == "postgres.auth_failed"


async def test_database_missing(env, postgres_server):
    name = f"no_such_db_{uuid.uuid4().hex[:8]}"
    report = await doctor.run({**env, "DATABASE_URL": postgres_server.url(name)})
    problem = report.get("postgresql").problem
    assert problem.code == "postgres.database_missing"
    assert f"database '{name}' does not exist" in problem.message
    assert report.exit_code == 1


# -- Redis -----------------------------------------------------------------------------------


async def test_redis_not_running(env, postgres_server, database):
    port = closed_port()
    report = await doctor.run(
        {
            **env,
            "DATABASE_URL": postgres_server.url(database),
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        }
    )
    check = report.get("redis")
    assert check.status == "fail"
    assert check.problem.code == "redis.unreachable"
    assert f"127.0.0.1:{port}" in check.problem.message
    assert report.get("postgresql").status == "ok"
    assert report.exit_code == 1


async def test_redis_needs_a_password(env, redis_url):
    without = "redis://" + redis_url.split("@", 1)[1]
    parts = urlsplit(without)
    report = await doctor.run({**env, "REDIS_URL": without})
    problem = report.get("redis").problem
    assert problem.code == "redis.auth_required"
    assert f"{parts.hostname}:{parts.port}" in problem.message
    assert "REDIS_PASSWORD" in problem.fix


# -- configuration, API port, data directory -------------------------------------------------


async def test_non_numeric_timeout_is_named_and_the_rest_still_checked(healthy):
    report = await doctor.run({**healthy, "POSTGRES_STARTUP_TIMEOUT": "abc"})
    check = report.get("configuration")
    assert check.status == "fail"
    assert check.problem.code == "config.invalid_value"
    assert "POSTGRES_STARTUP_TIMEOUT" in check.problem.message
    assert "seconds" in check.problem.message
    assert report.configuration["POSTGRES_STARTUP_TIMEOUT"] == "invalid"
    # Everything that does not depend on the invalid value was still checked.
    assert [report.get(n).status for n in ("postgresql", "redis", "api_port")] == ["ok"] * 3
    assert report.exit_code == 10


async def test_every_configuration_problem_is_listed(env):
    report = await doctor.run(
        {**env, "POSTGRES_STARTUP_TIMEOUT": "abc", "REDIS_PORT": "many", "LOG_LEVEL": "LOUD"}
    )
    variables = {c.problem.context["variable"] for c in report.checks if c.name == "configuration"}
    assert variables == {"POSTGRES_STARTUP_TIMEOUT", "REDIS_PORT", "LOG_LEVEL"}
    assert report.get("redis").status == "skip"  # it would read the invalid REDIS_PORT
    assert "REDIS_PORT" in report.get("redis").detail


async def test_api_port_in_use(healthy):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        report = await doctor.run({**healthy, "ORCHESTRATOR_PORT": str(port)})
    check = report.get("api_port")
    assert check.status == "fail"
    assert check.problem.code == "api.port_in_use"
    assert f"port {port}" in check.problem.message
    assert report.exit_code == 1


@pytest.mark.slow
def test_a_running_orchestrator_on_the_port_is_fine(healthy, tmp_path):
    port = int(healthy["ORCHESTRATOR_PORT"])
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamorch", "serve"],
            env={**controlled_environ(), **healthy, "LOG_LEVEL": "WARNING"},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_health(port, server, log)
        report = anyio.run(doctor.run, healthy)
    finally:
        server.terminate()
        server.wait(timeout=30)
    check = report.get("api_port")
    assert check.status == "ok", check
    assert check.problem is None
    assert check.data["held_by"] == "streamorch"
    assert check.data["pid"] == server.pid
    assert "Stream Orchestrator" in check.detail
    assert report.exit_code == 0


def wait_for_health(port: int, server: subprocess.Popen, log: Path) -> None:
    with httpx.Client(timeout=1, trust_env=False) as client:
        for _ in range(600):  # bounded: a server that never comes up fails the test
            if server.poll() is not None:
                pytest.fail(f"serve exited with {server.returncode}:\n{log.read_text()}")
            try:
                client.get(f"http://127.0.0.1:{port}/health")
            except httpx.HTTPError:
                time.sleep(0.1)
            else:
                return
    pytest.fail(f"serve did not answer /health:\n{log.read_text()}")


async def test_data_dir_not_writable(env, tmp_path):
    # Not chmod: root writes anyway. A path below a regular file fails for everyone.
    blocker = tmp_path / "a_regular_file"
    blocker.write_text("not a directory")
    report = await doctor.run({**env, "STREAMORCH_DATA_DIR": str(blocker / "data")})
    check = report.get("data_dir")
    assert check.status == "fail"
    assert check.problem.code == "embedded.data_dir_not_writable"
    assert str(blocker / "data") in check.problem.message
    assert str(blocker) in check.problem.fix
    assert report.get("embedded_postgresql").status == "skip"
    assert report.exit_code == 1


async def test_data_dir_only_matters_in_embedded_mode(healthy, tmp_path):
    blocker = tmp_path / "a_regular_file"
    blocker.write_text("not a directory")
    report = await doctor.run({**healthy, "STREAMORCH_DATA_DIR": str(blocker / "data")})
    assert "data_dir" not in names(report)
    assert report.exit_code == 0


async def test_embedded_servers_not_running(env, data_dir):
    report = await doctor.run(env)
    assert report.get("data_dir").status == "ok"
    for name, code in (
        ("embedded_postgresql", "embedded.postgres_not_running"),
        ("embedded_valkey", "embedded.valkey_not_running"),
    ):
        check = report.get(name)
        assert check.status == "fail"
        assert check.problem.code == code
        assert str(data_dir) in check.problem.message
        assert "streamorch services start" in check.problem.fix
        assert "start-orchestrator.sh" in check.problem.fix
    assert report.get("postgresql").status == "skip"
    assert report.get("redis").status == "skip"
    assert report.exit_code == 1


async def test_only_the_given_environment_counts(env, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://leak:leak@127.0.0.1:1/leak")
    monkeypatch.setenv("POSTGRES_STARTUP_TIMEOUT", "abc")
    report = await doctor.run(env)
    assert report.configuration["DATABASE_URL"] == "unset"
    assert report.get("configuration").status == "ok"
    assert "embedded_postgresql" in names(report)


# -- through the real CLI --------------------------------------------------------------------


def controlled_environ() -> dict[str, str]:
    """os.environ without anything that configures the orchestrator."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "FORCE_COLOR"}
        and not k.startswith(("DB_", "REDIS_", "POSTGRES_", "STREAMORCH_", "ORCHESTRATOR_"))
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamorch", "doctor", *args],
        env={**controlled_environ(), "COLUMNS": "400", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_exit_codes_and_no_password_in_output(healthy, postgres_server, redis_url, as_json):
    args = ["--json"] if as_json else []
    secrets = [password_of(postgres_server.admin_conninfo), urlsplit(redis_url).password]
    wrong = "wrong-pass-8d1f0c"
    cases = [
        (healthy, 0, None),
        ({**healthy, "POSTGRES_STARTUP_TIMEOUT": "abc"}, 10, "config.invalid_value"),
        (
            {**healthy, "DATABASE_URL": with_credentials(healthy["DATABASE_URL"], password=wrong)},
            1,
            "postgres.auth_failed",
        ),
    ]
    for case_env, exit_code, code in cases:
        result = cli(case_env, *args)
        output = result.stdout + result.stderr
        assert result.returncode == exit_code, output
        for secret in [*secrets, wrong]:
            assert secret not in output
        if as_json:
            body = json.loads(result.stdout)
            assert body["exit_code"] == exit_code
            codes = [c["problem"]["code"] for c in body["checks"] if c["problem"]]
            assert codes == ([code] if code else [])
            assert body["configuration"]["DATABASE_URL"] == "set"
        else:
            assert "DATABASE_URL" in result.stdout
            assert (code or "everything is fine") in result.stdout


@pytest.mark.slow
def test_cli_in_embedded_mode_uses_the_embedded_superuser(env):
    """The CLI tells a missing role from a wrong password with the embedded superuser."""
    settings = load_settings(env)
    services = EmbeddedServices(settings, durable=False)
    services.start(settings)
    try:
        anyio.run(provision.setup_database, settings)
        started = cli(env, "--json")
        missing_role = cli({**env, "DB_USER": "nobody_here"}, "--json")
        wrong = cli({**env, "DB_PASSWORD": "wrong-pass-77aa"}, "--json")
    finally:
        services.stop()

    body = json.loads(started.stdout)
    assert started.returncode == 0, started.stdout + started.stderr
    statuses = {c["name"]: c["status"] for c in body["checks"]}
    assert statuses == {
        "configuration": "ok",
        "data_dir": "ok",
        "embedded_postgresql": "ok",
        "embedded_valkey": "ok",
        "postgresql": "ok",
        "postgresql_schema": "warn",  # nothing migrated yet: start-up does that
        "redis": "ok",
        "api_port": "ok",
    }

    assert missing_role.returncode == 1
    problem = next(c["problem"] for c in json.loads(missing_role.stdout)["checks"] if c["problem"])
    assert problem["code"] == "postgres.role_missing"
    assert "'nobody_here'" in problem["message"]
    assert "streamorch services start" in problem["fix"]

    assert wrong.returncode == 1
    assert "wrong-pass-77aa" not in wrong.stdout + wrong.stderr
    problem = next(c["problem"] for c in json.loads(wrong.stdout)["checks"] if c["problem"])
    assert problem["code"] == "postgres.auth_failed"
    assert "the role exists" in problem["message"]
