"""Simulated instances of the original orchestrator's three client generations.

Written from the facts in docs/reference/compat-protocol.md (the original clients'
behaviour, their bugs included), to be driven against a real server over real HTTP:

* C1 (`OrchestratorClient` + fingerv7@9dd82b3): root protocol. Registers, pulls once
  and runs what came back; then beats every `heartbeat` s (with system metrics),
  checks its consistency with `GET /instances/{id}` after each beat (adopting the
  server's list on a mismatch, re-registering after more than 3 in a row), and pulls
  every `pull` s. Bugs: each pull's answer replaces what runs when it differs from the
  last one (B1: a hand-out after start-up drops what ran, the next empty pull drops the
  rest); the list is appended without de-duplication (B5); no release on stop (B2);
  never re-registers on an error.
* C2 (`ResilientWorkerClient`@333d14b): root protocol, no system metrics. Pulls once
  only (B3), runs only what that pull returned while counting its persisted list too
  (B9). Retries, local mode, `/health` every beat; releases its list on stop.
* C3 (`ResilientWorkerClient`@b5ffb45): `/api` protocol. Beats every 30–60 s, pulls
  every 3 s with GET and runs its whole list (which it also resumes after a restart,
  without asking); releases on the root `/streams/release` on stop.

C2 and C3 retry every failed call (3 attempts) and then go into local mode: no
register or heartbeat, pulls answered from the cached list; only a `/health` answering
200 with top-level "healthy" ends it. Timings are parameters, so tests scale 30 s down.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from streamorch.api.app import create_app
from streamorch.config import Settings


@asynccontextmanager
async def http_server(settings: Settings) -> AsyncIterator[str]:
    """The real app served by uvicorn on a free loopback port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped during start-up")
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class _Partitionable(httpx.AsyncHTTPTransport):
    def __init__(self, instance: Instance) -> None:
        super().__init__()
        self.instance = instance

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.instance.offline:
            raise httpx.ConnectError("partitioned", request=request)
        return await super().handle_async_request(request)


@dataclass
class Timing:
    """The clients' periods in seconds (30 s heartbeats, 3 s pulls in the field)."""

    heartbeat: float = 30.0
    pull: float = 3.0
    retry_delays: tuple[float, float] = (1.0, 2.0)


@dataclass
class Persisted:
    """`local_state_<server_id>.json`: what C2 and C3 reload after a restart."""

    lists: dict[str, list[int]] = field(default_factory=dict)


class Instance:
    """What every generation shares: its list, what runs, errors seen, life cycle."""

    generation = ""

    def __init__(
        self,
        base_url: str,
        server_id: str,
        *,
        max_streams: int = 20,
        timing: Timing | None = None,
        persisted: Persisted | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30, transport=_Partitionable(self))
        self.server_id = server_id
        self.max_streams = max_streams
        self.timing = timing or Timing()
        self.persisted = persisted if persisted is not None else Persisted()
        self.listed: list[int] = []  # the client's list of assigned streams (B5: may repeat)
        self.running: set[int] = set()  # what fingerv7 runs
        self.errors: list[str] = []  # what the client would log as an error
        self.heartbeats = 0
        self.pulls = 0
        self.handed: list[list[int]] = []  # every non-empty pull answer, in order
        self.local_mode = False
        self.alive = False
        self.offline = False  # a network partition: every request fails to connect
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ---------------------------------------------------------------------
    async def start(self) -> Instance:
        self.alive = True
        await self._start()
        return self

    async def _start(self) -> None:
        raise NotImplementedError

    async def kill(self) -> None:
        """SIGKILL: the process is gone, nothing is sent."""
        self.alive = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.running.clear()
        await self.http.aclose()

    async def stop(self) -> None:
        """SIGTERM: what each generation does on its way out, then gone."""
        await self.kill()

    def spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    def error(self, what: str) -> None:
        self.errors.append(what)

    async def _every(self, period: float, action: Any) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await action()
            except httpx.TransportError as exc:
                self.error(f"transport: {exc!r}")

    # -- calls ----------------------------------------------------------------------------
    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        """C1: one attempt; anything but 200 is an error (logged) and None."""
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            self.error(f"{method} {path}: {exc!r}")
            return None
        if response.status_code != 200:
            self.error(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
            return None
        return response.json()

    def _take(self, answer: dict[str, Any] | None) -> list[int]:
        """A pull's answer, as every generation reads it."""
        self.pulls += 1
        if answer is None:
            return []
        status = answer.get("status")
        if status == "assigned":
            new = list(answer["assigned_streams"])
            assert all(type(i) is int for i in new), answer
            self.listed += new  # B5: no de-duplication
            self.handed.append(new)
            return new
        if status not in ("no_streams", "no_capacity"):
            self.error(f"unexpected pull status {status!r}")
        return []

    @property
    def requested(self) -> int:
        return self.max_streams - len(self.listed)


class C1(Instance):
    generation = "C1"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registered = False
        self.mismatches = 0
        self.checks = 0
        self.consistent_checks = 0
        self.forced_reregistrations = 0
        self._last: list[int] = []  # the sync loop's last answer

    async def _start(self) -> None:
        await self.register()
        self.running = set(await self.pull())
        self.spawn(self._every(self.timing.heartbeat, self.beat))
        self.spawn(self._every(self.timing.pull, self.sync))

    async def register(self) -> None:
        body = {"server_id": self.server_id, "ip": "10.1.2.3", "port": 8000}
        answer = await self._call(
            "POST", "/register", json={**body, "max_streams": self.max_streams}
        )
        self.registered = answer is not None and answer.get("status") == "registered"
        if answer is not None and not self.registered:
            self.error(f"register answered {answer}")

    async def pull(self) -> list[int]:
        body = {"server_id": self.server_id, "requested_count": self.requested}
        return self._take(await self._call("POST", "/streams/assign", json=body))

    async def sync(self) -> None:
        if not self.registered:
            return
        result = await self.pull()
        if result != self._last:  # B1: the delta is taken as the whole set
            self.running = set(result)
            self._last = result

    async def beat(self) -> None:
        metrics = {
            "cpu_percent": 12.5,
            "memory_percent": 40.0,
            "memory_used_gb": 3.2,
            "memory_total_gb": 8.0,
            "disk_percent": 50.0,
            "disk_free_gb": 100.0,
            "disk_total_gb": 200.0,
            "load_average": [0.5, 0.4, 0.3],
            "uptime_seconds": 1234,
        }
        body = {
            "server_id": self.server_id,
            "current_streams": len(self.listed),
            "status": "active",
            "system_metrics": metrics,
        }
        reported = len(self.listed)
        answer = await self._call("POST", "/heartbeat", json=body)
        if answer is not None and answer.get("status") == "heartbeat_updated":
            self.heartbeats += 1
        elif answer is not None:
            self.error(f"heartbeat answered {answer}")
        await self.check(reported)

    async def check(self, reported: int) -> None:
        """The consistency check after each heartbeat."""
        answer = await self._call("GET", f"/instances/{self.server_id}")
        if answer is None:
            return
        data = answer.get("data") or {}
        assigned = data.get("assigned_streams")
        count = data.get("current_streams")
        if (
            answer.get("status") != "success"
            or not isinstance(assigned, list)
            or not isinstance(count, int)
        ):
            self.error(f"consistency check answered {answer}")
            return
        self.checks += 1
        if sorted(set(assigned)) == sorted(set(self.listed)) and count == reported:
            self.mismatches = 0
            self.consistent_checks += 1
            return
        self.mismatches += 1
        self.listed = list(assigned)  # B4: the list changes, what runs does not
        if self.mismatches > 3:
            self.forced_reregistrations += 1
            self.mismatches = 0
            await self.register()


class Resilient(Instance):
    """C2 and C3: retries, local mode, `/health` polling, persisted list, release on stop."""

    async def _resilient(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        delays = [*self.timing.retry_delays, None]
        for delay in delays:
            try:
                response = await self.http.request(method, path, **kwargs)
                if response.status_code == 200:
                    return response.json()
                what = f"HTTP {response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                what = repr(exc)
            if delay is None:
                break
            await asyncio.sleep(delay * random.uniform(0.75, 1.25))
        self.error(f"{method} {path} failed after retries: {what}")
        self.local_mode = True
        return None

    async def health(self) -> None:
        answer = await self._resilient("GET", "/health")
        if answer is not None:
            if answer.get("status") == "healthy":
                self.local_mode = False
            else:
                self.local_mode = True
                self.error(f"/health answered {answer.get('status')!r}: local mode")

    def persist(self) -> None:
        self.persisted.lists[self.server_id] = list(self.listed)

    async def stop(self) -> None:
        await self.release(list(self.listed))
        await self.kill()

    async def release(self, ids: list[int]) -> None:
        if not self.local_mode:
            body = {"server_id": self.server_id, "stream_ids": ids}
            answer = await self._resilient("POST", "/streams/release", json=body)
            if answer is not None and answer.get("status") == "released":
                gone = set(answer["released_streams"])
                self.listed = [i for i in self.listed if i not in gone]
            elif answer is not None:
                self.error(f"release answered {answer}")
        self.persist()


class C2(Resilient):
    generation = "C2"

    async def _start(self) -> None:
        self.listed = list(self.persisted.lists.get(self.server_id, []))  # B9
        answer = await self._resilient(
            "POST",
            "/register",
            json={
                "server_id": self.server_id,
                "ip": "10.1.2.4",
                "port": 8000,
                "max_streams": self.max_streams,
            },
        )
        if answer is not None and answer.get("status") != "registered":
            self.error(f"register answered {answer}")
        # B3: the only pull. B9: only what it returned runs.
        self.running = set(await self.pull())
        self.persist()
        self.spawn(self._every(self.timing.heartbeat, self.beat))

    async def pull(self) -> list[int]:
        if self.local_mode:
            return []
        body = {"server_id": self.server_id, "requested_count": self.requested}
        return self._take(await self._resilient("POST", "/streams/assign", json=body))

    async def beat(self) -> None:
        if not self.local_mode:
            body = {
                "server_id": self.server_id,
                "current_streams": len(self.listed),
                "status": "active",
            }
            answer = await self._resilient("POST", "/heartbeat", json=body)
            if answer is not None and answer.get("status") == "heartbeat_updated":
                self.heartbeats += 1
            elif answer is not None:
                self.error(f"heartbeat answered {answer}")
        await self.health()


class C3(Resilient):
    generation = "C3"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registered = False

    async def _start(self) -> None:
        self.listed = list(self.persisted.lists.get(self.server_id, []))
        self.running = set(self.listed)  # resumes its old list without asking
        await self.register()  # in main
        await self.register()  # and again in reload_streams, then one pull
        await self.sync()
        self.spawn(self._beat_loop())
        self.spawn(self._every(self.timing.pull, self.sync))

    async def register(self) -> None:
        if self.local_mode:
            return
        body = {
            "instance_id": self.server_id,
            "worker_type": "fingerv7",
            "capacity": self.max_streams,
            "ip": "10.1.2.5",
            "port": 8000,
            "status": "active",
            "metadata": {"version": "7", "capabilities": ["fingerprinting"]},
        }
        answer = await self._resilient("POST", "/api/workers/register", json=body)
        self.registered = bool(answer and answer.get("success"))

    async def sync(self) -> None:
        if not self.local_mode:
            params = {
                "worker_id": self.server_id,
                "capacity": self.requested,
                "worker_type": "fingerv7",
            }
            self._take(await self._resilient("GET", "/api/streams/assign", params=params))
            self.persist()
        self.running = set(self.listed)  # it runs its whole list

    async def _beat_loop(self) -> None:
        while True:
            # 30 + random 0–30, capped at 60 (in units of the heartbeat period)
            await asyncio.sleep(
                min(self.timing.heartbeat * (1 + random.random()), 2 * self.timing.heartbeat)
            )
            try:
                await self.beat()
            except httpx.TransportError as exc:
                self.error(f"transport: {exc!r}")

    async def beat(self) -> None:
        if not self.local_mode:
            body = {
                "worker_instance_id": self.server_id,
                "status": "active",
                "current_load": len(self.listed),
                "available_capacity": self.requested,
                "metrics": {"cpu": 3.0},
            }
            if await self._resilient("POST", "/api/heartbeat", json=body) is not None:
                self.heartbeats += 1  # the answer is not checked
        await self.health()


GENERATIONS = {"C1": C1, "C2": C2, "C3": C3}


def overlaps(instances: list[Instance]) -> dict[int, list[str]]:
    """Streams running on more than one live instance."""
    seen: dict[int, list[str]] = {}
    for inst in instances:
        if inst.alive:
            for i in inst.running:
                seen.setdefault(i, []).append(inst.server_id)
    return {i: names for i, names in seen.items() if len(names) > 1}
