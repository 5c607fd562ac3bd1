"""The original orchestrator's two instance protocols, mapped onto the engine.

An instance is a worker of kind `original`: `server_id` (or `instance_id`) is its
name, `max_streams` (or `capacity`) its capacity, and it carries the label
`protocol=compat`. A stream id is the stream whose key is that id in decimal ("42").

The original clients can never be told to stop a stream, and their heartbeat names
none. So (docs/decisions/0012-original-instances-pinned.md):

* what an instance owns is pinned there while its lease holds: placement never moves
  it (domain/placement.py) and never grants the instance anything;
* the instance takes streams when it pulls: first its own from before a restart,
  then unassigned ones, as a delta that never repeats an id within one registration
  (`compat_handouts` holds what each registration was handed, minus releases);
* its heartbeat renews a lease of COMPAT_LEASE_TTL; one from an instance the server
  no longer holds revives it (200, never an error) and takes back what nobody took;
* only its release or the end of its lease frees its streams; new workers take them
  in the same reconcile pass, other instances on their next pull.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Iterable
from typing import Any

from streamorch.core.service import Orchestrator

log = logging.getLogger(__name__)

LABELS = {"protocol": "compat"}
# The original's MAX_STREAMS_PER_INSTANCE: the capacity of an instance first seen by a
# heartbeat of the root protocol (which carries no capacity).
DEFAULT_MAX_STREAMS = 20
POOL_EMPTY_TTL_S = 1.0

_ID_KEY = re.compile(r"^(0|[1-9][0-9]{0,17})$")


def key_of(stream_id: int) -> str:
    return str(stream_id)


def id_of(key: str) -> int | None:
    """The integer id of a stream key, or None if the protocol cannot name it."""
    return int(key) if _ID_KEY.match(key) else None


def ids_of(keys: Iterable[str]) -> list[int]:
    return sorted(i for i in map(id_of, keys) if i is not None)


def address(ip: str | None, port: int | None) -> str | None:
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if port else host


def split_address(value: str | None) -> tuple[str | None, int | None]:
    if not value:
        return None, None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return value, None
    return host.strip("[]"), int(port)


class Compat:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        if orch.compat_store is None:
            raise RuntimeError("the orchestrator was built without the original protocol's store")
        self.store = orch.compat_store
        self.ttl = orch.settings.compat_lease_ttl
        self._pool_empty_at = -math.inf

    async def _pool_exists(self) -> bool:
        """Whether any stream waits for an owner. Every instance asks every 3 s and, with
        none waiting, the answer costs a scan of the catalog: a "no" is reused for
        POOL_EMPTY_TTL_S (a freed stream then waits at most that much longer)."""
        now = time.monotonic()
        if now - self._pool_empty_at < POOL_EMPTY_TTL_S:
            return False
        exists = await self.store.pool_exists()
        self._pool_empty_at = -math.inf if exists else now
        return exists

    async def instance(self, server_id: str) -> dict[str, Any] | None:
        """The worker registered as `server_id`, or None."""
        return await self.store.instance(server_id)

    async def urls(self, ids: list[int]) -> dict[str, str]:
        """The URL of each of these streams that exists, by key."""
        return await self.store.urls([key_of(i) for i in ids])

    async def _changed(self, touched: set[str]) -> None:
        await self.orch.notifier.publish(touched)
        self.orch.reconciler.wake()

    async def register(
        self,
        server_id: str,
        *,
        capacity: int,
        ip: str | None,
        port: int | None,
        labels: dict[str, str],
        generation: str,
        metrics: dict[str, Any],
    ) -> dict[str, Any]:
        """A new process under `server_id`: what it owned stays its own (handed back on its
        first pull) while its lease holds; what it was handed before is forgotten."""
        row, touched = await self.orch.store.register(
            name=server_id,
            capacity=capacity,
            labels={**labels, **LABELS},
            address=address(ip, port),
            ttl=self.ttl,
            kind="original",
        )
        await self.store.mark_original(row["id"], generation=generation, metrics=metrics)
        await self._changed(touched | {str(row["id"])})
        return row

    async def heartbeat(
        self,
        server_id: str,
        *,
        metrics: dict[str, Any],
        generation: str | None,
        capacity: int | None = None,
    ) -> str:
        """Renew the lease; revive the instance if the server no longer holds it.

        Returns "renewed", "revived" or "created".
        """
        if await self.store.beat(server_id, metrics=metrics, generation=generation, ttl=self.ttl):
            return "renewed"
        row = await self.store.instance(server_id)
        if row is None:
            await self.register(
                server_id,
                capacity=capacity or DEFAULT_MAX_STREAMS,
                ip=None,
                port=None,
                labels={},
                generation=generation or "C1/C2",
                metrics=metrics,
            )
            outcome = "created"
        else:
            # Its lease ran out (or it was removed) while it kept running: a new
            # incarnation with the same hand-outs, which it still holds.
            new, touched = await self.orch.store.register(
                name=server_id,
                capacity=row["capacity"],
                labels=row["labels"],
                address=row["address"],
                ttl=self.ttl,
                kind="original",
            )
            recovered, lost = await self.store.recover(new["id"])
            await self._changed(touched | {str(new["id"])})
            log.warning(
                "instance %s of the original protocol was revived by a heartbeat after its "
                "lease ended: %d of its streams recovered, %d run elsewhere now",
                server_id,
                len(recovered),
                len(lost),
                extra={"action": "instance_revived", "lost": len(lost)},
            )
            outcome = "revived"
        await self.store.beat(server_id, metrics=metrics, generation=generation, ttl=self.ttl)
        return outcome

    async def pull(self, server_id: str, requested: int) -> tuple[str, list[int], str]:
        """(status, ids, message): "assigned", "no_streams" or "no_capacity"."""
        row = await self.store.instance(server_id)
        # The second generation pulls once per process (its bug B3): this is that pull.
        once = row is not None and row["generation"] == "C2"
        if requested <= 0 and not once:
            return "no_streams", [], "no streams requested"
        if row is None:
            return "no_streams", [], f"instance {server_id!r} is not registered: register first"
        from_pool = requested > 0 and await self._pool_exists()
        keys, state = await self.store.hand_out(
            row["id"], limit=max(requested, 0), from_pool=from_pool, once=once
        )
        if state is not None and state.get("unclaimed"):
            self.orch.reconciler.wake()
            log.warning(
                "instance %s (second generation) pulled for %d stream(s) after it started; %d "
                "it owned before would run nowhere (its persisted list) and were freed",
                server_id,
                max(requested, 0),
                len(state["unclaimed"]),
                extra={"action": "compat_unclaimed", "freed": len(state["unclaimed"])},
            )
        if requested <= 0:
            return "no_streams", [], "no streams requested"
        if keys:
            return "assigned", ids_of(keys), f"{len(keys)} stream(s) assigned"
        if state is None or state["status"] != "active":
            status = "unknown" if state is None else state["status"]
            return "no_streams", [], f"instance is {status}: it gets streams once it is active"
        if state["room"] <= 0:
            return "no_capacity", [], "the instance runs as many streams as it may"
        return "no_streams", [], "no stream is waiting for an instance"

    async def release(self, server_id: str, ids: list[int]) -> list[int]:
        row = await self.store.instance(server_id)
        if row is None or not ids:
            return []
        released = await self.store.release(row["id"], [key_of(i) for i in sorted(set(ids))])
        self._pool_empty_at = -math.inf  # what it freed waits for the next puller
        self.orch.reconciler.wake()
        return ids_of(released)

    # -- views ---------------------------------------------------------------------

    async def instances(self, name: str | None = None) -> list[dict[str, Any]]:
        """The whole fleet (new workers too) in the original's shape, plus kind and lease.

        Shaped in a worker thread: the fleet is one unpaged answer, and its stream lists
        hold every assigned stream (tens of milliseconds of Python at 20,000)."""
        rows = await self.store.instances(name)
        return await asyncio.to_thread(lambda: [instance_view(r) for r in rows])

    async def assignments(self) -> list[dict[str, Any]]:
        """Every assignment of a stream with an id, newest first: one entry per assigned
        stream (20,000 with a large fleet), shaped in a worker thread."""
        rows = await self.store.assignments()
        return await asyncio.to_thread(lambda: [assignment_view(r) for r in rows])


def instance_view(r: dict[str, Any]) -> dict[str, Any]:
    """A worker row (CompatStore.instances) as the original protocol's instance."""
    ip, port = split_address(r["address"])
    original = r["kind"] == "original"
    reported = r["metrics"].get("current_streams") if original else None
    live = r["status"] in ("active", "draining")
    return {
        "server_id": r["name"],
        "ip": ip,
        "port": port,
        "max_streams": r["capacity"],
        "current_streams": int(reported if reported is not None else r["running_count"]),
        "status": "active" if live else "inactive",
        "registered_at": r["registered_at"].isoformat(),
        "last_heartbeat": r["last_heartbeat"].isoformat(),
        # What this registration holds: handed out minus released (original
        # instances), or granted (new workers).
        "assigned_streams": ids_of(r["handed"] if original else r["owned"]),
        "kind": r["kind"],
        "generation": r["generation"],
        "state": r["status"],
        "worker_id": str(r["id"]),
        "lease_expires_at": r["lease_expires_at"].isoformat(),
        "pinned_streams": ids_of(r["owned"]) if original else [],
    }


def assignment_view(r: dict[str, Any]) -> dict[str, Any]:
    """An assignment row (CompatStore.assignments) as the original protocol's entry."""
    ip, port = split_address(r["address"])
    return {
        "stream_id": int(r["stream_key"]),
        "server_id": r["name"],
        "assigned_at": r["since"].isoformat(),
        "status": "active" if r["state"] == "granted" else "stopping",
        "ip": ip,
        "port": port,
    }
