"""The container image, built from the Dockerfile and run with podman.

Proves what operators rely on: the image builds; it starts on its embedded PostgreSQL and
Valkey and reaches /ready; its own HEALTHCHECK passes, and fails while PostgreSQL is down;
every process runs as a non-root user; calls without the token are refused; SIGTERM stops
it with exit 0 after shutting the embedded servers down cleanly; the data survives a
restart on the same volume; configuration errors exit with the documented codes.

Outside CI the tests skip when podman is missing; under CI=true they must run (`.ci/run`
installs podman, runc and mmdebstrap).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streamorch.backing import instance
from tests.container.podman import Podman, base_images

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TOKENS = {"STREAMORCH_ADMIN_TOKEN": "admin-secret", "STREAMORCH_WORKER_TOKEN": "worker-secret"}
ADMIN = {"Authorization": f"Bearer {TOKENS['STREAMORCH_ADMIN_TOKEN']}"}
READY_TIMEOUT = 120.0  # a bound for slow, shared CI machines, not a speed goal
STOP_TIMEOUT = 30  # the grace period the docs recommend (`docker stop -t 30`)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    executable = shutil.which("podman")
    if executable is None:
        if _in_ci():
            pytest.fail("podman is missing under CI: .ci/run should have installed it")
        pytest.skip("podman is not installed (apt-get install podman runc mmdebstrap)")
    tool = Podman(executable)
    yield tool
    tool.close()


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image built from the working tree; build figures are printed for the benchmarks."""
    workdir = tmp_path_factory.mktemp("image")
    base_s = [podman.ensure_base(name, workdir) for name in base_images()]
    tag = f"localhost/streamorch:test-{uuid.uuid4().hex[:8]}"
    build_s = podman.build(tag)
    size_mb = podman.image_size(tag) / 1e6
    print(
        f"\nimage {tag}: {size_mb:.0f} MB, build {build_s:.1f} s, "
        f"base {', '.join('present' if s is None else f'{s:.1f} s' for s in base_s)}"
    )
    yield tag
    podman.run("rmi", "--force", tag, check=False)


class Container:
    """One container of the image, on its own volume unless told otherwise."""

    def __init__(self, podman: Podman, image: str, volume: str, env: dict[str, str]) -> None:
        self.podman, self.image, self.volume, self.env = podman, image, volume, env
        self.name = f"streamorch-test-{uuid.uuid4().hex[:8]}"
        self.port: int | None = None

    def start(self) -> float:
        """Start it; seconds until /ready answers 200."""
        env = [f"--env={k}={v}" for k, v in self.env.items()]
        began = time.monotonic()
        self.podman.run(
            "run",
            "--detach",
            f"--name={self.name}",
            "--publish=127.0.0.1::8001",
            f"--volume={self.volume}:/data",
            *env,
            self.image,
        )
        self.port = self.podman.host_port(self.name, 8001)
        deadline = began + READY_TIMEOUT
        while True:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return time.monotonic() - began
            except httpx.TransportError:
                pass
            running = self.podman.run("inspect", "--format", "{{.State.Running}}", self.name)
            assert running.stdout.strip() == "true", f"container exited:\n{self.logs()}"
            assert time.monotonic() < deadline, f"/ready not reached:\n{self.logs()}"
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthcheck(self) -> int:
        """Run the image's own HEALTHCHECK once: 0 healthy, 1 unhealthy."""
        return self.podman.run("healthcheck", "run", self.name, check=False).returncode

    def exec(self, *command: str) -> str:
        return self.podman.run("exec", self.name, *command).stdout

    def stop(self) -> int:
        """SIGTERM (the image's STOPSIGNAL), then wait; the exit code."""
        self.podman.run("stop", f"--time={STOP_TIMEOUT}", self.name, timeout=STOP_TIMEOUT + 30)
        return self.podman.exit_code(self.name)

    def logs(self) -> str:
        return self.podman.logs(self.name)[-6000:]

    def remove(self) -> None:
        self.podman.run("rm", "--force", "--time=0", self.name, check=False)


@pytest.fixture
def volume(podman: Podman) -> Iterator[str]:
    name = f"streamorch-test-{uuid.uuid4().hex[:8]}"
    podman.run("volume", "create", name)
    yield name
    podman.run("volume", "rm", "--force", name, check=False)


@pytest.fixture
def containers(podman: Podman, image: str) -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for container in made:
        container.remove()


def new(containers: list[Container], podman: Podman, image: str, volume: str) -> Container:
    container = Container(podman, image, volume, dict(TOKENS))
    containers.append(container)
    return container


def test_serves_as_non_root_with_a_passing_healthcheck(
    podman: Podman, image: str, volume: str, containers: list[Container]
) -> None:
    container = new(containers, podman, image, volume)
    ready_s = container.start()
    print(f"\nready after {ready_s:.1f} s (container start to /ready 200)")

    assert container.healthcheck() == 0, container.logs()

    # Every process, the embedded PostgreSQL and Valkey included, runs as uid 10001.
    users = podman.run("top", container.name, "user", "huser", "comm").stdout.splitlines()[1:]
    assert users, "podman top listed no process"
    for line in users:
        user, _huser, comm = line.split(None, 2)
        assert user == "streamorch", f"{comm.strip()} runs as {user}"
    assert container.exec("id", "-u").strip() == "10001"

    # The tokens given in the environment are enforced.
    assert httpx.get(f"{container.url}/v1/streams", timeout=5).status_code == 401
    assert httpx.get(f"{container.url}/v1/streams", headers=ADMIN, timeout=5).status_code == 200


def test_sigterm_stops_cleanly_data_survives_and_healthcheck_needs_postgres(
    podman: Podman, image: str, volume: str, containers: list[Container]
) -> None:
    first = new(containers, podman, image, volume)
    first.start()
    created = httpx.put(
        f"{first.url}/v1/streams/radio-1",
        json={"url": "https://example.org/radio-1", "weight": 2},
        headers=ADMIN,
        timeout=5,
    )
    assert created.status_code in {200, 201}, created.text

    code = first.stop()
    logs = first.logs()
    assert code == 0, f"exit {code} after SIGTERM:\n{logs}"
    assert "embedded_stopped" in logs, f"the embedded servers were not stopped:\n{logs}"
    # A PostgreSQL that was shut down (not killed with the container) removes its pid file;
    # so does Valkey, stopped by the server. Nothing was left to be killed. The data
    # directory's instance lock (orchestrator.pid) stays as a file, emptied on a clean exit.
    data = podman.volume_path(volume)
    lock = data / instance.FILE_NAME
    leftovers = sorted(str(p.relative_to(data)) for p in data.rglob("*.pid") if p != lock)
    assert leftovers == [], f"pid files left behind: {leftovers}\n{logs}"
    assert not lock.exists() or lock.read_text() == "", "the instance record was not cleared"

    second = new(containers, podman, image, volume)
    second.start()
    stream = httpx.get(f"{second.url}/v1/streams/radio-1", headers=ADMIN, timeout=5)
    assert stream.status_code == 200, stream.text
    assert stream.json()["weight"] == 2

    # The same container, now without PostgreSQL: its HEALTHCHECK must fail.
    assert second.healthcheck() == 0, second.logs()
    second.exec("sh", "-c", 'kill -INT "$(head -n 1 /data/postgres/postmaster.pid)"')
    deadline = time.monotonic() + READY_TIMEOUT
    while second.healthcheck() == 0:
        assert time.monotonic() < deadline, f"still healthy without PostgreSQL:\n{second.logs()}"
        time.sleep(0.5)
    health = httpx.get(f"{second.url}/health", timeout=5)
    assert health.status_code == 503
    assert health.json()["services"]["postgresql"]["status"] != "ready"


@pytest.mark.parametrize(
    ("env", "expected", "message"),
    [
        pytest.param({"ORCHESTRATOR_PORT": "eighty"}, 10, "ORCHESTRATOR_PORT", id="config-10"),
        pytest.param(
            # Nothing listens on port 1: PostgreSQL is unreachable within its start-up bound.
            {"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db", "POSTGRES_STARTUP_TIMEOUT": "2"},
            12,
            "postgres",
            id="postgres-12",
        ),
    ],
)
def test_configuration_errors_exit_with_the_documented_code(
    podman: Podman, image: str, env: dict[str, str], expected: int, message: str
) -> None:
    """docs/reference/exit-codes.md: 10 invalid configuration, 12 PostgreSQL unreachable."""
    documented = (Path(__file__).resolve().parents[2] / "docs/reference/exit-codes.md").read_text()
    assert f"| {expected} |" in documented
    result = podman.run(
        "run", "--rm", *(f"--env={k}={v}" for k, v in env.items()), image, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == expected, f"exit {result.returncode}:\n{output[-4000:]}"
    assert message.lower() in output.lower(), output[-4000:]
    if expected == 10:
        # Refused before anything started: no service was started to be torn down.
        assert "phase_start" not in output
        assert not any(
            json.loads(line).get("action") == "embedded_started"
            for line in output.splitlines()
            if line.startswith("{")
        )
