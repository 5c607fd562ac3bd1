"""`streamorch serve`: the start-up sequence, then the HTTP server, then teardown.

SIGTERM and SIGINT stop whatever is running — a start-up phase or the server —
after which the embedded servers this process owns are stopped, PostgreSQL last.
The process exits 0 on such a requested stop, or with the failing phase's code.

With embedded servers, the data directory belongs to one process at a time
(backing/instance.py): a second start on it refuses before doing anything, and a
process only ever stops the servers it started (or took over from a dead instance).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

from streamorch.backing.instance import AlreadyRunning, InstanceLock
from streamorch.config import Settings
from streamorch.domain.errors import StartupError
from streamorch.domain.problems import Problem
from streamorch.ops.exposure import OPEN_API_FIX, exposed, open_api_warning
from streamorch.ops.startup import EmbeddedServices, ExitCode, StartupReport, run_startup
from streamorch.server.loop import loop_factory, release_long_polls

log = logging.getLogger(__name__)


class StopRequested(BaseException):
    """Raised by the signal handler to unwind start-up or serving."""


def _request_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


def serve(settings: Settings, *, keep_services: bool = False) -> int:
    """Run the orchestrator until stopped; returns the exit code."""
    began = time.monotonic()
    services = EmbeddedServices(settings)
    instance = InstanceLock(settings.data_dir) if services.any else None
    if instance is not None:
        try:
            instance.acquire(host=settings.orchestrator_host, port=settings.orchestrator_port)
        except AlreadyRunning as exc:
            return _refuse_second_start(exc)
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_serve(settings, services, began, instance))
    except StopRequested as stop:
        log.info("stop requested (%s); shutting down", stop, extra={"action": "stop_requested"})
        return int(ExitCode.OK)
    except StartupError as exc:
        if exc.phase == "serve":  # the other phases logged their failure already
            log.error(
                "phase serve failed: %s",
                exc.problem.message,
                extra={
                    "action": "phase_failed",
                    "phase": "serve",
                    "code": exc.problem.code,
                    "exit_code": exc.exit_code,
                    "fix": exc.problem.fix,
                },
            )
        return exc.exit_code
    finally:
        stopping = time.monotonic()
        # No signal may interrupt the teardown half-way.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        if services.any and not keep_services:
            owned = services.started_here() | (instance.inherited() if instance else set())
            services.stop(only=owned)
            log.info(
                "embedded services stopped in %.0f ms",
                (time.monotonic() - stopping) * 1000,
                extra={"action": "embedded_stopped", "stopped": sorted(owned)},
            )
        if instance is not None:
            instance.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return int(ExitCode.OK)


def _refuse_second_start(exc: AlreadyRunning) -> int:
    """Another live instance owns the data directory: say so and touch nothing."""
    holder = exc.holder
    stop = f"stop it first (kill -TERM {holder.pid})" if holder.pid else "stop it first"
    log.error(
        "%s — another orchestrator serves from this data directory (%s)",
        exc,
        exc.path.parent,
        extra={
            "action": "already_running",
            "code": "instance.already_running",
            "pid": holder.pid,
            "port": holder.port,
            "exit_code": int(ExitCode.SERVE),
            "fix": f"{stop}, or give this start its own STREAMORCH_DATA_DIR and ORCHESTRATOR_PORT",
        },
    )
    return int(ExitCode.SERVE)


def warn_if_exposed(settings: Settings) -> bool:
    """Loudly warn when the API is reachable from other machines without any token."""
    if not exposed(settings):
        return False
    log.warning(
        open_api_warning(settings),
        extra={"action": "auth_disabled_on_network", "fix": OPEN_API_FIX},
    )
    return True


def bind_socket(settings: Settings) -> socket.socket:
    host, port = settings.orchestrator_host, settings.orchestrator_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose proto
    # says TCP, and without it every answer written in two parts (headers, body) waits
    # ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            "serve",
            int(ExitCode.SERVE),
            Problem(
                "api.port_in_use" if exc.errno == 98 else "api.bind_failed",
                f"cannot listen on {host}:{port}: {exc.strerror}",
                f"stop the process using port {port} (e.g. `ss -ltnp 'sport = :{port}'`), "
                "or set ORCHESTRATOR_PORT to a free port",
            ),
        ) from exc
    sock.set_inheritable(True)
    return sock


async def _serve(
    settings: Settings,
    services: EmbeddedServices,
    began: float,
    instance: InstanceLock | None = None,
) -> None:
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn waits for in-flight requests on shutdown: end long-polls first."""

        def __init__(self, config: uvicorn.Config, on_exit: Callable[[], object]) -> None:
            super().__init__(config)
            self._on_exit = on_exit
            self._loop = asyncio.get_running_loop()

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self._loop.call_soon_threadsafe(self._on_exit)

    from streamorch.api import limits
    from streamorch.api.app import create_app

    sock = bind_socket(settings)  # fail fast, before minutes of waiting
    warn_if_exposed(settings)
    try:
        report: StartupReport = await run_startup(settings, services)
        if instance is not None:  # a later start after a crash takes these over
            instance.record_started(services.started_here() | instance.inherited())
        if settings.server_processes > 1:
            await _serve_processes(settings, sock, began)
            return
        app = create_app(settings, report)
        config = limits.server_config(
            app,
            settings,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
        server = _Server(config, on_exit=lambda: release_long_polls(app))
        server_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not server_task.done():
            await asyncio.sleep(0.01)
        if server.started:
            _log_ready(settings, began)
        await server_task
        if not server.started:
            raise StartupError(
                "serve",
                int(ExitCode.SERVE),
                Problem(
                    "api.startup_failed",
                    "the application failed to start",
                    "see the error logged above",
                ),
            )
    finally:
        sock.close()


def _log_ready(settings: Settings, began: float) -> None:
    log.info(
        "orchestrator ready on http://%s:%d (start-up took %.0f ms)",
        settings.orchestrator_host,
        settings.orchestrator_port,
        (time.monotonic() - began) * 1000,
        extra={"action": "ready", "duration_ms": round((time.monotonic() - began) * 1000)},
    )


async def _serve_processes(settings: Settings, sock: socket.socket, began: float) -> None:
    """SERVER_PROCESSES > 1: children serve on `sock`; stopped before any embedded service.

    A raising signal handler cannot unwind an event loop that waits in uvloop (it only logs
    the exception), so while supervising, SIGTERM/SIGINT set an event instead.
    """
    from streamorch.server.processes import ServerProcesses

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        loop.call_soon_threadsafe(stop.set)

    processes = ServerProcesses(settings, sock)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    supervisor = asyncio.create_task(processes.run(on_ready=lambda: _log_ready(settings, began)))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({supervisor, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if supervisor.done():
            supervisor.result()  # start-up of the processes failed: raise it
        log.info(
            "stop requested (%s); shutting down",
            received[0] if received else "signal",
            extra={"action": "stop_requested"},
        )
    finally:
        for task in (supervisor, stopping):
            task.cancel()
        processes.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
