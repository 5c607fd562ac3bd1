"""The engine's front: what routes call.

The `Orchestrator` performs each change through its store (one transaction each),
then wakes the workers concerned and the local reconciler. It is given its
collaborators (core/ports.py); ops/wiring.py builds them on PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from streamorch.config import Settings
from streamorch.core import engine
from streamorch.core.catalog_sync import CatalogSync
from streamorch.core.loop_lag import LoopLag
from streamorch.core.ports import (
    CompatStore,
    DashboardReads,
    EngineStore,
    Notifier,
    RetentionStore,
    SourceFetch,
)
from streamorch.core.reconciler import Reconciler
from streamorch.core.retention import Retention
from streamorch.domain import credentials, placement
from streamorch.domain.errors import NotFound
from streamorch.domain.models import Policy, StreamView
from streamorch.domain.records import HeartbeatResult, StreamSpec


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        *,
        store: EngineStore,
        notifier: Notifier,
        retention: RetentionStore,
        compat: CompatStore | None = None,
        source: SourceFetch | None = None,
        dashboard: DashboardReads | None = None,
    ) -> None:
        """`compat`: the original protocol's store (core/compat.py); `source`: reads the
        external stream catalog when STREAMS_SOURCE_DSN is set (core/catalog_sync.py);
        `dashboard`: the dashboard's own bounded reads (api/ui)."""
        self.settings = settings
        self.store = store
        self.compat_store = compat
        self.dashboard = dashboard
        self.offload = engine.Offloader(in_thread=settings.reconcile_plan_in_thread)
        self.loop_lag = LoopLag(window_s=settings.lease_ttl)
        self.notifier = notifier
        self.policy = Policy(
            settings.rebalance_threshold,
            settings.max_moves_per_pass,
            settle_s=settings.placement_settle_s,
            settle_max_s=settings.placement_settle_max_s,
        )
        self.reconciler = Reconciler(
            self.store,
            self.policy,
            settings.reconcile_interval,
            self.notifier.publish,
            lease_ttl=settings.lease_ttl,
            lag=self.loop_lag,
            offload=self.offload,
        )
        self.retention = Retention(retention, settings)
        # Only when a source is configured: keeps the catalog equal to its rows.
        self.catalog_sync = (
            CatalogSync(settings, self.bulk, source)
            if settings.streams_source_dsn and source is not None
            else None
        )

    async def start(self) -> None:
        self.loop_lag.start()
        self.notifier.start()
        self.reconciler.start()
        self.retention.start()
        if self.catalog_sync is not None:
            self.catalog_sync.start()

    async def stop(self) -> None:
        if self.catalog_sync is not None:
            await self.catalog_sync.stop()
        await self.retention.stop()
        await self.reconciler.stop()
        await self.notifier.stop()
        await self.loop_lag.stop()

    async def _changed(self, touched: set[str]) -> None:
        await self.notifier.publish(touched)
        self.reconciler.wake()

    # -- catalog ---------------------------------------------------------------
    async def put_stream(self, spec: StreamSpec) -> tuple[bool, dict[str, Any]]:
        created = await self.store.upsert_stream(spec)
        self.reconciler.wake()
        return created, await self.get_stream(spec.key)

    async def get_stream(self, key: str) -> dict[str, Any]:
        row = await self.store.get_stream(key)
        if row is None:
            raise NotFound("stream", key)
        if row["worker_id"] is None and row["enabled"]:
            row["reason"] = await self.explain(key)
        return row

    async def find_stream(self, key: str) -> dict[str, Any] | None:
        """The stream's row as stored (no explanation), or None."""
        return await self.store.get_stream(key)

    async def streams(
        self,
        *,
        after: str,
        limit: int,
        state: str | None = None,
        worker: str | None = None,
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        """Up to `limit` streams in key order after `after`, filtered."""
        return await self.store.list_streams(
            after=after, limit=limit, state=state, worker=worker, search=search
        )

    async def delete_stream(self, key: str) -> None:
        await self._changed(await self.store.delete_stream(key))

    async def bulk(self, specs: list[StreamSpec], mode: str) -> dict[str, int]:
        counts, touched = await self.store.bulk(specs, mode)
        await self._changed(touched)
        return counts

    async def explain(self, key: str) -> str:
        snapshot = await self.store.placement_snapshot(self.offload)
        snapshot.settling = self.reconciler.stats.settling
        if key not in snapshot.streams:
            # The snapshot holds only streams placement may act on; a disabled stream
            # that runs nowhere is not one of them, yet it exists and must be explained.
            row = await self.store.get_stream(key)
            if row is not None:
                snapshot.streams[key] = StreamView(
                    key, row["weight"], row["requires"], row["enabled"]
                )
        return await self.offload(placement.explain, snapshot, key, self.policy)

    # -- fleet -----------------------------------------------------------------
    async def register(
        self,
        *,
        name: str,
        capacity: int,
        labels: dict[str, str],
        address: str | None,
        proof: str | None = None,
        supersede: bool = True,
    ) -> dict[str, Any]:
        """A new incarnation of `name`; its row carries the incarnation's `secret`.

        `supersede` false: a live holder of the name is fenced only when `proof` is its
        secret (docs/decisions/0014-per-worker-credentials.md).
        """
        secret = credentials.new_secret()
        row, touched = await self.store.register(
            name=name,
            capacity=capacity,
            labels=labels,
            address=address,
            ttl=self.settings.lease_ttl,
            secret_hash=credentials.digest(secret),
            proof=proof,
            supersede=supersede,
        )
        await self._changed(touched)
        return {**row, "secret": secret}

    async def check_secret(self, worker_id: uuid.UUID, secret: str | None) -> None:
        """NotFound for an unknown worker; Forbidden unless `secret` is its current one."""
        stored = await self.store.worker_secret_hash(worker_id)
        if secret is None:
            raise credentials.refused(worker_id, given=False)
        if not credentials.matches(secret, stored):
            raise credentials.refused(worker_id)

    async def heartbeat(
        self,
        worker_id: uuid.UUID,
        *,
        incarnation: int,
        running: list[str],
        draining: bool,
        metrics: dict[str, Any],
        acked_version: int | None = None,
        secret: str | None = None,
    ) -> HeartbeatResult:
        """`secret` None: the caller authenticated the worker itself (the original protocol)."""
        result = await self.store.heartbeat(
            worker_id,
            incarnation=incarnation,
            running=running,
            draining=draining,
            metrics=metrics,
            ttl=self.settings.lease_ttl,
            acked_version=acked_version,
            secret=secret,
        )
        # A beat that starts a drain moved the generation in its own transaction.
        if result.running_changed or result.became_draining:
            self.reconciler.wake()
        return result

    async def desired(
        self, worker_id: uuid.UUID, *, version: int | None, wait: float
    ) -> dict[str, Any]:
        """The worker's desired set; with `wait`, as soon as its version differs from `version`."""
        if version is None or wait <= 0:
            return await self.store.desired(worker_id)
        async with self.notifier.subscription(str(worker_id)) as changed:
            if await self.store.version(worker_id) == version:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait)
        return await self.store.desired(worker_id)

    async def drain(self, worker_id: uuid.UUID) -> None:
        await self.store.drain(worker_id)
        self.reconciler.wake()

    async def deregister(self, worker_id: uuid.UUID, *, force: bool) -> None:
        await self._changed(await self.store.deregister(worker_id, force=force))

    async def workers(
        self, statuses: list[str] | None, *, after: str = "", limit: int = 1000
    ) -> list[dict[str, Any]]:
        return await self.store.list_workers(statuses, after=after, limit=limit)

    async def find_worker(
        self, *, name: str | None = None, worker_id: uuid.UUID | None = None
    ) -> dict[str, Any] | None:
        """One worker by name or id, whatever its status, or None."""
        return await self.store.get_worker(name=name, worker_id=worker_id)

    async def original_instance(self, name: str) -> dict[str, Any] | None:
        """The worker registered under `name` as the original protocol sees it, or None."""
        if self.compat_store is None:
            return None
        return await self.compat_store.instance(name)

    async def worker(
        self, *, name: str | None = None, worker_id: uuid.UUID | None = None
    ) -> dict[str, Any]:
        row = await self.store.get_worker(name=name, worker_id=worker_id)
        if row is None:
            raise NotFound("worker", name or str(worker_id))
        return row

    async def forget(self, worker_id: uuid.UUID) -> str:
        """Forget a departed worker now (retention does it after WORKER_RETENTION)."""
        return await self.retention.store.forget(worker_id)

    # -- cluster ---------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        raw = await self.store.status()
        loads = [r for r in raw["loads"] if r["status"] == "active"]
        capacity = sum(r["capacity"] for r in raw["loads"])
        load = sum(r["load"] for r in raw["loads"])
        utilisation = [r["load"] / r["capacity"] for r in loads]
        mean = sum(utilisation) / len(utilisation) if utilisation else 0.0
        stats = self.reconciler.stats
        return {
            "streams": {k: int(v) for k, v in raw["streams"].items()},
            "workers": {
                s: raw["workers"].get(s, 0) for s in ("active", "draining", "expired", "left")
            },
            "capacity": capacity,
            "load": load,
            "load_percent": round(100 * load / capacity, 1) if capacity else 0.0,
            "balance": {
                "max_utilisation": round(max(utilisation), 4) if utilisation else 0.0,
                "mean_utilisation": round(mean, 4),
                "max_over_mean": round(max(utilisation) / mean, 4) if mean else None,
            },
            "reconciler": {
                "last_pass_at": _iso(stats.last_pass_at),
                "last_pass_age_s": round(time.time() - stats.last_pass_at, 3)
                if stats.last_pass_at
                else None,
                "last_duration_ms": stats.last_duration_ms,
                "passes": stats.passes,
                "last_error": stats.last_error,
                "note": "every server process runs a reconciler; passes are serialised by a "
                "PostgreSQL advisory lock, so there is no leader to elect or lose",
            },
        }

    async def events(
        self,
        *,
        since: int = 0,
        limit: int,
        stream: str | None,
        newest: bool = False,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        return await self.store.events(
            since=since, limit=limit, stream=stream, newest=newest, before=before
        )


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
