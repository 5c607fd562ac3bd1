"""Wiring the engine to its adapters: the one place that names both core and store."""

from __future__ import annotations

from streamorch.config import Settings
from streamorch.core.service import Orchestrator
from streamorch.store import catalog_source
from streamorch.store.clients import RedisClient
from streamorch.store.compat import CompatStore
from streamorch.store.dashboard import DashboardStore
from streamorch.store.database import DatabaseManager
from streamorch.store.postgres import EngineStore
from streamorch.store.redis import Notifier
from streamorch.store.retention import RetentionStore


def build_orchestrator(
    settings: Settings, db: DatabaseManager, redis: RedisClient | None
) -> Orchestrator:
    """The Orchestrator on PostgreSQL (`db`) and, when configured, Redis."""
    return Orchestrator(
        settings,
        store=EngineStore(db),
        notifier=Notifier(db.target.conninfo, redis),
        retention=RetentionStore(db),
        compat=CompatStore(db),
        source=catalog_source.fetch_rows,
        dashboard=DashboardStore(db),
    )
