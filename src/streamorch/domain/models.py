"""The orchestrator's vocabulary as plain data: no I/O, no framework.

These are the inputs and outputs of placement (`domain/placement.py`): the store
builds a `Snapshot` from PostgreSQL, placement returns a `Plan`, the store writes
it back in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NamedTuple

AssignmentState = Literal["granted", "revoking"]
EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class WorkerView:
    """A live worker (lease valid): `active` takes new streams, `draining` does not.

    `pinned`: an instance of the original protocol. It cannot be told to stop a
    stream, so placement never moves one off it and never grants it anything: it
    takes unassigned streams itself when it pulls (core/compat.py).
    """

    id: str
    capacity: int
    labels: Mapping[str, str] = field(default_factory=dict)
    draining: bool = False
    name: str = ""
    pinned: bool = False

    def satisfies(self, requires: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in requires.items())


# Streams and holdings are named tuples, not frozen dataclasses: a snapshot builds
# one of each per stream, and at 100,000 streams a frozen dataclass's __init__ cost
# ~0.5 s per pass where a tuple costs a fifth of that (bench/reconcile.py --breakdown).
class StreamView(NamedTuple):
    key: str
    weight: int = 1
    requires: Mapping[str, str] = EMPTY
    enabled: bool = True


class Holding(NamedTuple):
    """The one assignment row of a stream (I1): who owns it, and whether it is moving.

    `revoking`: the owner was told to stop; the stream still runs there and counts
    against the owner's capacity until the owner reports it stopped. `target`, if
    set, is the worker it moves to; its weight is reserved there meanwhile.
    """

    stream: str
    worker: str
    state: AssignmentState = "granted"
    target: str | None = None


@dataclass
class Snapshot:
    """Everything placement needs, read in one transaction.

    `workers`: live workers only. `streams`: every stream that is unassigned or
    assigned (a stream absent from `streams` but present in `assignments` was
    deleted). `preferred`: for streams whose move just finished, the target chosen
    when the move began. `settling`: workers are still registering one after another
    (domain/settle.py): unassigned streams wait.
    """

    workers: dict[str, WorkerView]
    streams: dict[str, StreamView]
    assignments: dict[str, Holding]
    preferred: dict[str, str] = field(default_factory=dict)
    settling: bool = False


@dataclass(frozen=True)
class Policy:
    # Extra utilisation spread tolerated before rebalancing; 0 balances to within
    # one stream's weight (I6). Larger values trade balance for fewer moves.
    rebalance_threshold: float = 0.0
    # Bound on moves (revokes with a target) per pass, whatever their reason (I5).
    max_moves: int = 100
    # While workers register one after another, placement waits until registrations
    # were quiet for `settle_s`, at most `settle_max_s` into the burst (domain/settle.py).
    settle_s: float = 0.0
    settle_max_s: float = 0.0


@dataclass(frozen=True)
class Grant:
    stream: str
    worker: str
    reason: str  # placed | moved (the target of a finished move) | ...


@dataclass(frozen=True)
class Revoke:
    stream: str
    worker: str
    target: str | None
    reason: str  # drain | rebalance | constraint | capacity | disabled | deleted


@dataclass
class Plan:
    grants: list[Grant] = field(default_factory=list)
    revokes: list[Revoke] = field(default_factory=list)
    # Enabled streams left unassigned, with a sentence saying why (used by explain).
    unplaced: dict[str, str] = field(default_factory=dict)

    @property
    def moves(self) -> int:
        return sum(1 for r in self.revokes if r.target is not None)

    @property
    def empty(self) -> bool:
        return not self.grants and not self.revokes
