"""What SDK tests share: a journal of callbacks and stream creation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from streamorch.client import AdminClient, Assignment


@dataclass
class Calls:
    """Every callback of one worker, with wall-clock times (comparable across processes)."""

    assigned: list[tuple[float, Assignment]] = field(default_factory=list)
    revoked: list[tuple[float, Assignment]] = field(default_factory=list)

    def on_assign(self, stream: Assignment) -> None:
        self.assigned.append((time.time(), stream))

    async def on_revoke(self, stream: Assignment) -> None:  # async on purpose: both kinds work
        self.revoked.append((time.time(), stream))

    def revoked_keys(self) -> set[str]:
        return {a.stream for _, a in self.revoked}

    def assigned_keys(self) -> set[str]:
        return {a.stream for _, a in self.assigned}


async def create_streams(admin: AdminClient, keys: list[str]) -> None:
    await admin.bulk([{"key": k, "url": f"http://radio.example/{k}.mp3"} for k in keys])
