"""The original instance protocol mapped onto the engine (API.md § Compatibility).

An instance is a worker: `server_id` is its name, `max_streams` its capacity, and it
carries the label `protocol=compat`. A stream id is the stream whose key is that id
in decimal ("42"); streams with other keys cannot be named in this protocol.

The engine pushes: placement grants streams to the instance as to any worker. The
instance pulls: `/streams/assign` hands out granted streams it does not run yet, and
records the hand-out, so that until the instance reports the stream in
`current_streams` it counts as running there and no move of it can finish (I1).
A heartbeat's `current_streams` is the instance's running set; a stream absent from
it is stopped, which is how revokes are acknowledged (no version in this protocol).
`/streams/release` is the instance's own stop report: the streams are revoked
towards another worker and move at its next heartbeat without them.
Failover is the engine's: an instance that stops heartbeating loses its lease.

See docs/decisions/0004-compat-protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streamorch.core.service import Orchestrator
from streamorch.domain.errors import LeaseExpired, NotFound
from streamorch.store.compat import CompatStore

LABELS = {"protocol": "compat"}
# Heartbeat statuses of the original instances that mean "give me nothing new".
DRAINING_STATUSES = frozenset({"draining", "stopping", "shutting_down", "shutdown", "maintenance"})
# The most a pull with nothing to hand out waits for the reconciler to grant something.
MAX_PULL_WAIT_S = 2.0

_ID_KEY = re.compile(r"^(0|[1-9][0-9]{0,17})$")


class UnknownInstance(NotFound):
    def __init__(self, server_id: str) -> None:
        super().__init__("instance", server_id)
        self.args = (f"no instance {server_id!r} is registered: POST /register first",)


def key_of(stream_id: int) -> str:
    return str(stream_id)


def id_of(key: str) -> int | None:
    """The integer id of a stream key, or None if the protocol cannot name it."""
    return int(key) if _ID_KEY.match(key) else None


def ids_of(keys: Iterable[str]) -> list[int]:
    return sorted(i for i in map(id_of, keys) if i is not None)


def address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def split_address(value: str | None) -> tuple[str | None, int | None]:
    if not value:
        return None, None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return value, None
    return host.strip("[]"), int(port)


def choose_targets(
    streams: Sequence[Mapping[str, Any]], candidates: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """For each released stream, the eligible worker with room and the lowest utilisation.

    Greedy, heaviest first, ties by worker id; a stream with no such worker gets no
    target and placement decides once it stopped (possibly the same instance again).
    """
    load = {c["id"]: c["load"] for c in candidates}
    chosen: dict[str, str] = {}
    for stream in sorted(streams, key=lambda s: (-s["weight"], s["stream_key"])):
        best = None
        for c in candidates:
            if not all(c["labels"].get(k) == v for k, v in stream["requires"].items()):
                continue
            after = load[c["id"]] + stream["weight"]
            if after > c["capacity"]:
                continue
            rank = (after / c["capacity"], c["id"])
            if best is None or rank < best[0]:
                best = (rank, c["id"])
        if best is not None:
            chosen[stream["stream_key"]] = best[1]
            load[best[1]] += stream["weight"]
    return chosen


class Compat:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.store = CompatStore(orch.db)
        self.ttl = orch.settings.lease_ttl

    async def _instance(self, server_id: str) -> dict[str, Any]:
        row = await self.store.instance(server_id)
        if row is None:
            raise UnknownInstance(server_id)
        return row

    async def register(
        self, server_id: str, ip: str, port: int, max_streams: int, labels: dict[str, str]
    ) -> dict[str, Any]:
        row = await self.orch.register(
            name=server_id,
            capacity=max_streams,
            labels={**labels, **LABELS},
            address=address(ip, port),
        )
        # A new process runs nothing yet: whatever it kept is handed out again on its pull.
        await self.store.clear_handouts(row["id"])
        return row

    async def heartbeat(
        self, server_id: str, current: list[int], status: str
    ) -> tuple[dict[str, Any], Any]:
        row = await self._instance(server_id)
        reported = sorted({key_of(i) for i in current})
        pending = await self.store.settle_handouts(row["id"], reported, ttl=self.ttl)
        result = await self.orch.heartbeat(
            row["id"],
            incarnation=row["incarnation"],
            running=sorted(set(reported) | set(pending)),
            draining=status.lower() in DRAINING_STATUSES,
            metrics={"protocol": "compat", "reported": len(reported), "handed_out": len(pending)},
            report_is_current=True,
        )
        await self.store.restore_handouts(row["id"], ttl=self.ttl)
        desired = ids_of(a["stream"] for a in result.assignments)
        wanted = set(desired)
        return {
            "assigned_streams": desired,
            "streams_to_stop": sorted(set(current) - wanted),
            "awaiting_pull": len(wanted - set(current) - {int(k) for k in pending}),
            "instance_status": result.status,
        }, result

    async def assign(self, server_id: str, requested: int) -> tuple[list[int], str]:
        row = await self._instance(server_id)
        keys, state = await self._hand_out(row, requested)
        if not keys and requested > 0 and state is not None and state["status"] == "active":
            # Nothing granted yet (e.g. right after register): give the reconciler a pass,
            # and the fleet time to settle if instances are still registering.
            version = await self.orch.store.version(row["id"])
            self.orch.reconciler.wake()
            settings = self.orch.settings
            wait = min(
                3 * settings.reconcile_interval + settings.placement_settle_s, MAX_PULL_WAIT_S
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await self.orch.desired(row["id"], version=version, wait=wait)
            keys, state = await self._hand_out(row, requested)
        if state is None:
            raise UnknownInstance(server_id)
        return ids_of(keys), state["status"]

    async def _hand_out(
        self, row: dict[str, Any], requested: int
    ) -> tuple[list[str], dict[str, Any] | None]:
        keys, state = await self.store.hand_out(row["id"], limit=requested, ttl=self.ttl)
        if state is not None and (
            state["status"] in ("expired", "left") or not state["lease_valid"]
        ):
            raise LeaseExpired(
                "the lease expired (no heartbeat in time): stop every stream and register "
                "again with POST /register",
                status=state["status"],
            )
        return keys, state

    async def release(self, server_id: str, stream_ids: list[int]) -> tuple[list[int], list[int]]:
        row = await self._instance(server_id)
        wanted = sorted(set(stream_ids))
        owned, touched = await self.store.release(
            row["id"], [key_of(i) for i in wanted], choose_targets
        )
        if touched:
            await self.orch.notifier.publish(touched)
        self.orch.reconciler.wake()
        released = ids_of(owned)
        return released, [i for i in wanted if i not in set(released)]

    async def instances(self) -> list[dict[str, Any]]:
        out = []
        for r in await self.store.instances():
            ip, port = split_address(r["address"])
            out.append(
                {
                    "server_id": r["name"],
                    "worker_id": str(r["id"]),
                    "ip": ip,
                    "port": port,
                    "max_streams": r["capacity"],
                    "status": r["status"],
                    "protocol": r["labels"].get("protocol", "v1"),
                    "current_streams": ids_of(r["running"]),
                    "assigned_streams": ids_of(r["granted"]),
                    "last_heartbeat": r["last_heartbeat"].isoformat(),
                    "lease_expires_at": r["lease_expires_at"].isoformat(),
                }
            )
        return out

    async def owners(self) -> dict[str, Any]:
        rows = await self.store.owners()
        pairs = sorted((int(r["stream_key"]), r["name"], r["state"]) for r in rows)
        return {
            "assignments": {str(i): name for i, name, _ in pairs},
            "moving": sorted(i for i, _, state in pairs if state == "revoking"),
            "count": len(pairs),
        }
