"""Build and run the project's image with podman, the way CI machines can.

Podman runs here with `runc`, the cgroupfs manager and no default ulimits (a
containers.conf of our own), which works inside unprivileged CI sandboxes where
systemd and cgroup delegation are missing.

No image registry is assumed reachable: when the base image named in the
Dockerfile's `FROM` is not in local storage, a stand-in with the same name is
built from Debian packages (`mmdebstrap`, then `podman import`). The build runs
with the host network and the host's CA certificates and pip configuration
mounted, so `pip install` inside the build reaches the same package index the
host uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

# What the stand-in base must hold for the Dockerfile: `python -m venv`, useradd, TLS roots.
STANDIN_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates,passwd"
STANDIN_SUITE = "bookworm"  # the Debian release the real base image is built on

# Host pip configuration mounted into the build, when present (system-wide files only:
# per-user files often name host-only paths such as local wheel directories).
PIP_CONFIG_MOUNTS = ("/etc/pip.conf", "/etc/xdg/pip")
CA_CERTIFICATES = "/etc/ssl/certs"


class PodmanError(AssertionError):
    """A podman command failed; the message carries its output."""


def base_images() -> list[str]:
    """The external images the Dockerfile builds FROM (earlier stages excluded)."""
    stages: set[str] = set()
    images: list[str] = []
    for match in re.finditer(
        r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", DOCKERFILE.read_text(), re.M | re.I
    ):
        image, stage = match.group(1), match.group(2)
        if image.lower() not in stages and image not in images:
            images.append(image)
        if stage:
            stages.add(stage.lower())
    return images


@dataclass
class Timings:
    base_s: float | None = None  # None: the base image was already present
    build_s: float = 0.0


class Podman:
    """podman with the flags that work in CI sandboxes; one private containers.conf."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self._confdir = Path(tempfile.mkdtemp(prefix="streamorch-podman-"))
        conf = self._confdir / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def close(self) -> None:
        shutil.rmtree(self._confdir, ignore_errors=True)

    def run(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        command = [self.executable, "--runtime", "runc", "--cgroup-manager=cgroupfs", *args]
        result = subprocess.run(
            command,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise PodmanError(
                f"{' '.join(command)} exited {result.returncode}:\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def has_image(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def ensure_base(self, image: str, workdir: Path) -> float | None:
        """Import a stand-in for `image` unless it exists; seconds taken, or None."""
        if self.has_image(image):
            return None
        mmdebstrap = shutil.which("mmdebstrap")
        if mmdebstrap is None:
            raise PodmanError(
                f"the base image {image} is not in local storage and mmdebstrap is missing: "
                "apt-get install mmdebstrap (or pull the image)"
            )
        began = time.monotonic()
        tarball = workdir / "base.tar"
        result = subprocess.run(
            [
                mmdebstrap,
                "--variant=apt",
                f"--include={STANDIN_PACKAGES}",
                # Documentation and translations only make the stand-in bigger.
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                STANDIN_SUITE,
                str(tarball),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise PodmanError(f"mmdebstrap exited {result.returncode}:\n{result.stderr[-4000:]}")
        try:
            self.run("import", str(tarball), image, timeout=300)
        finally:
            tarball.unlink(missing_ok=True)
        return time.monotonic() - began

    def build(self, tag: str, *, cache: bool = True) -> float:
        """Build the project's Dockerfile as `tag`; seconds taken."""
        mounts: list[str] = []
        for path in (CA_CERTIFICATES, *PIP_CONFIG_MOUNTS):
            if os.path.exists(path):
                mounts += ["--volume", f"{path}:{path}:ro"]
        config_file = os.environ.get("PIP_CONFIG_FILE")
        if config_file and os.path.isfile(config_file):
            mounts += ["--volume", f"{config_file}:/etc/pip.conf:ro"]
        began = time.monotonic()
        self.run(
            "build",
            "--format=docker",  # the OCI format has no HEALTHCHECK
            "--pull=never",
            "--network=host",
            *([] if cache else ["--no-cache"]),
            *mounts,
            "--tag",
            tag,
            str(ROOT),
            timeout=900,
        )
        return time.monotonic() - began

    def image_size(self, tag: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())

    def host_port(self, container: str, port: int) -> int:
        out = self.run("port", container, f"{port}/tcp").stdout.strip().splitlines()[0]
        return int(out.rsplit(":", 1)[1])

    def exit_code(self, container: str) -> int:
        return int(self.run("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip())

    def volume_path(self, volume: str) -> Path:
        return Path(
            self.run("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip()
        )

    def logs(self, container: str) -> str:
        result = self.run("logs", container, check=False)
        return result.stdout + result.stderr
