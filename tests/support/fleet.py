"""A fleet of simulated workers on one journal, and the events log read back (I1)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import httpx

from tests.support.sim_journal import Journal
from tests.support.simworker import SimWorker, Target
from tests.support.waiting import Predicate, wait_until

# Reasons whose `revoked` event ends ownership at once (nothing runs there any more);
# other revokes leave the stream running on its owner until a `stopped` event.
ENDING_REVOKES = frozenset({"lease_expired", "forced_removal", "reregistered"})


class Fleet:
    """A set of SimWorkers sharing one journal; closes them all on exit."""

    def __init__(
        self, targets: Target | Sequence[Target], *, journal: Journal | None = None, **defaults: Any
    ) -> None:
        items = [targets] if isinstance(targets, str | httpx.AsyncClient) else list(targets)
        self._owned: list[httpx.AsyncClient] = []
        self.targets: list[httpx.AsyncClient] = []
        for item in items:
            if isinstance(item, str):
                client = httpx.AsyncClient(
                    base_url=item, timeout=defaults.get("request_timeout", 5)
                )
                self._owned.append(client)
                self.targets.append(client)
            else:
                self.targets.append(item)
        self.journal = journal if journal is not None else Journal()
        self.defaults = defaults
        self.workers: dict[str, SimWorker] = {}
        self._spread = itertools.count()

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def add_target(self, target: Target) -> int:
        """A further server for workers added from now on; returns its index."""
        if isinstance(target, str):
            client = httpx.AsyncClient(
                base_url=target, timeout=self.defaults.get("request_timeout", 5)
            )
            self._owned.append(client)
            target = client
        self.targets.append(target)
        return len(self.targets) - 1

    def _targets_for(self, index: int | None) -> list[httpx.AsyncClient]:
        """All targets, starting at the `index`-th (round robin when None)."""
        i = next(self._spread) if index is None else index
        i %= len(self.targets)
        return self.targets[i:] + self.targets[:i]

    async def add(self, name: str, *, server: int | None = None, **kwargs: Any) -> SimWorker:
        """Start one worker; `server` picks its first target (round robin by default)."""
        options = {**self.defaults, **kwargs}
        worker = SimWorker(name, self._targets_for(server), journal=self.journal, **options)
        self.workers[name] = worker
        return await worker.start()

    async def start(self, n: int, *, prefix: str = "w", **kwargs: Any) -> list[SimWorker]:
        first = len(self.workers)
        names = [f"{prefix}{i:03d}" for i in range(first, first + n)]
        return list(await asyncio.gather(*(self.add(name, **kwargs) for name in names)))

    def __getitem__(self, name: str) -> SimWorker:
        return self.workers[name]

    @property
    def live(self) -> list[SimWorker]:
        return [w for w in self.workers.values() if w.alive]

    def owners(self) -> dict[str, list[str]]:
        """stream -> names of live workers running it, from the workers' own state."""
        out: dict[str, list[str]] = {}
        for worker in self.live:
            for stream in worker.running:
                out.setdefault(stream, []).append(worker.name)
        return out

    def runs_exactly(self, keys: Iterable[str]) -> bool:
        """Every key runs on exactly one live worker, and nothing else runs."""
        owners = self.owners()
        wanted = set(keys)
        return set(owners) == wanted and all(len(v) == 1 for v in owners.values())

    def problems(self) -> list[str]:
        """Everything that must be empty at the end of a run: overlaps, token
        regressions, protocol anomalies and unexpected answers."""
        out = self.journal.overlaps() + self.journal.token_regressions()
        for worker in self.workers.values():
            out += worker.anomalies + [f"{worker.name}: {e}" for e in worker.errors]
        return out

    async def wait_until(
        self, predicate: Predicate, *, timeout: float = 30.0, what: str = ""
    ) -> None:
        await wait_until(predicate, timeout=timeout, what=what)

    async def close(self) -> None:
        await asyncio.gather(*(w.aclose() for w in self.workers.values()))
        for client in self._owned:
            await client.aclose()
        self._owned.clear()


async def all_events(client: httpx.AsyncClient, *, page: int = 1000) -> list[dict[str, Any]]:
    """Every event, walking `GET /v1/events` by `since`."""
    events: list[dict[str, Any]] = []
    since = 0
    while True:
        response = await client.get("/v1/events", params={"since": since, "limit": page})
        response.raise_for_status()
        body = response.json()
        events += body["items"]
        if len(body["items"]) < page:
            return events
        since = body["next_since"]


def ownership_violations(events: Sequence[dict[str, Any]]) -> list[str]:
    """Replay assigned/revoked/stopped per stream: a grant while another still owns it is I1.

    A stream is owned from its `assigned` (or `moved`) until its owner's `stopped`, or a `revoked`
    whose reason ends ownership at once (lease expired, forced removal, a registration
    after the lease). Other revokes (rebalance, drain, deleted, ...) leave it owned —
    it still runs there — until the `stopped`.
    """
    owner: dict[str, str] = {}
    found = []
    for e in events:
        stream, worker, kind = e["stream"], e["worker_id"], e["kind"]
        if stream is None:
            continue
        if kind in ("assigned", "moved"):
            if stream in owner:
                found.append(
                    f"event {e['id']}: {stream} assigned to {e['worker']} while still owned by "
                    f"{owner[stream]}"
                )
            owner[stream] = worker
        elif kind == "stopped" or (kind == "revoked" and e["reason"] in ENDING_REVOKES):
            if owner.get(stream) != worker:
                found.append(
                    f"event {e['id']}: {kind} ({e['reason']}) of {stream} on {e['worker']} "
                    f"but the owner is {owner.get(stream)}"
                )
            owner.pop(stream, None)
    return found
