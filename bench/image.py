"""The container image: its size, how long it takes to build, and to start.

Builds the Dockerfile with podman the way the container tests do (tests/container/podman.py:
runc, cgroupfs, a stand-in base image from mmdebstrap when the FROM image is not in local
storage), then starts it on a fresh volume (first start: the embedded PostgreSQL is
initialised) and again on the same volume, timing `podman run` to the first 200 from /ready,
and `podman stop` (SIGTERM) to exit.

    .venv/bin/python bench/image.py [--fresh-base] [--json]

--fresh-base removes the base image first, to time a build on a machine that has none;
--no-cache builds every layer anew (otherwise layers cached by an earlier build are reused).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the podman helpers are shared with the container tests
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import BenchError, machine, run_bench  # noqa: E402
from tests.container.podman import Podman, PodmanError, base_images  # noqa: E402

READY_TIMEOUT_S = 120.0


def start(podman: Podman, image: str, volume: str, name: str) -> float:
    began = time.monotonic()
    podman.run(
        "run",
        "--detach",
        f"--name={name}",
        "--publish=127.0.0.1::8001",
        f"--volume={volume}:/data",
        image,
    )
    port = podman.host_port(name, 8001)
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < began + READY_TIMEOUT_S:
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    return time.monotonic() - began
            time.sleep(0.05)
    raise BenchError(f"/ready not reached within {READY_TIMEOUT_S:g}s:\n{podman.logs(name)}")


def stop(podman: Podman, name: str) -> float:
    began = time.monotonic()
    podman.run("stop", "--time=30", name, timeout=60)
    elapsed = time.monotonic() - began
    code = podman.exit_code(name)
    if code != 0:
        raise BenchError(f"exit {code} after SIGTERM:\n{podman.logs(name)}")
    return elapsed


def measure(args: argparse.Namespace) -> dict[str, Any]:
    executable = shutil.which("podman")
    if executable is None:
        raise BenchError("podman is not installed (apt-get install podman runc mmdebstrap)")
    podman = Podman(executable)
    tag = f"localhost/streamorch:bench-{uuid.uuid4().hex[:8]}"
    volume = f"streamorch-bench-{uuid.uuid4().hex[:8]}"
    names: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="streamorch-image-"))
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["bench/image.py", *sys.argv[1:]]),
    }
    try:
        if args.fresh_base:
            for base in base_images():
                podman.run("rmi", "--force", base, check=False)
        base_s = [podman.ensure_base(base, workdir) for base in base_images()]
        result["base_s"] = [None if s is None else round(s, 1) for s in base_s]
        print(f"base image: {result['base_s']} (None: already present)", flush=True)
        result["build_cached"] = not args.no_cache
        result["build_s"] = round(podman.build(tag, cache=not args.no_cache), 1)
        result["size_mb"] = round(podman.image_size(tag) / 1e6)
        print(f"image: build {result['build_s']} s, {result['size_mb']} MB", flush=True)
        podman.run("volume", "create", volume)
        for label in ("first_start", "restart"):
            name = f"streamorch-bench-{uuid.uuid4().hex[:8]}"
            names.append(name)
            ready = start(podman, tag, volume, name)
            stopped = stop(podman, name)
            result[f"{label}_ready_s"] = round(ready, 2)
            result[f"{label}_stop_s"] = round(stopped, 2)
            print(
                f"{label}: /ready after {ready:.2f} s, SIGTERM to exit {stopped:.2f} s", flush=True
            )
    except PodmanError as exc:
        raise BenchError(str(exc)) from None
    finally:
        for name in names:
            podman.run("rm", "--force", "--time=0", name, check=False)
        podman.run("volume", "rm", "--force", volume, check=False)
        podman.run("rmi", "--force", tag, check=False)
        podman.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def report(result: dict[str, Any]) -> None:
    base = ", ".join("present" if s is None else f"{s} s" for s in result["base_s"])
    print(
        f"image {result['size_mb']} MB; build {result['build_s']} s "
        f"({'layer cache used' if result['build_cached'] else 'no cache'}; base: {base}); "
        f"/ready after {result['first_start_ready_s']} s on a fresh volume, "
        f"{result['restart_ready_s']} s on the same volume; SIGTERM to exit "
        f"{result['first_start_stop_s']} s / {result['restart_stop_s']} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh-base", action="store_true", help="rebuild the base image too")
    parser.add_argument(
        "--no-cache", action="store_true", help="build every layer anew (a first build)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    return run_bench(lambda: measure(args), report, as_json=args.json)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
