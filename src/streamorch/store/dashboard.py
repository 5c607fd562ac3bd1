"""Read-only PostgreSQL queries of the dashboard (api/ui) that the engine store has no call for.

Everything else the dashboard shows comes from `Orchestrator` and `EngineStore`. Every
query here is bounded (by a key, a limit or a window of recent events), so no page
reads the whole catalog or event log; queries live in `sql/dashboard.sql`. Statements
are not prepared: their optional filters must be planned with the actual values.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from streamorch.store import queries
from streamorch.store.database import DatabaseManager
from streamorch.store.retry import driver_errors_wrapped

# How many of the newest events a kind or worker filter, and the activity chart, look at.
EVENT_WINDOW = 200_000


def sql(name: str) -> str:
    return queries.sql(name, "dashboard")


@driver_errors_wrapped
class DashboardStore:
    def __init__(self, db: DatabaseManager) -> None:
        self.db = db

    async def _rows(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.db.connection(prepared=False) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql(name), params)
            return await cur.fetchall()

    async def recent_events(
        self,
        *,
        limit: int,
        after: int = 0,
        before: int | None = None,
        kind: str | None = None,
        stream: str | None = None,
        worker: uuid.UUID | None = None,
    ) -> list[dict[str, Any]]:
        """The newest events (newest first) matching every filter given."""
        return await self._rows(
            "recent_events",
            {
                "limit": limit,
                "after": after,
                "before": before,
                "kind": kind,
                "stream": stream,
                "worker": worker,
                "window": EVENT_WINDOW,
            },
        )

    async def activity(self) -> list[dict[str, Any]]:
        """Per minute of the last hour (0 = now): grants, moves, revokes, expired workers."""
        return await self._rows("activity", {"window": EVENT_WINDOW})

    async def live_instances(self, labels: dict[str, str]) -> int:
        rows = await self._rows("live_instances", {"labels": Jsonb(labels)})
        return int(rows[0]["count"])

    async def worker(self, worker_id: uuid.UUID) -> dict[str, Any] | None:
        rows = await self._rows("worker", {"id": worker_id})
        return rows[0] if rows else None

    async def worker_streams(
        self, worker_id: uuid.UUID, *, after: str, limit: int
    ) -> list[dict[str, Any]]:
        return await self._rows("worker_streams", {"id": worker_id, "after": after, "limit": limit})
