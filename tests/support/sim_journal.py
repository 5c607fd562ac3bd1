"""The journal of simulated workers: every start, stop and token change, on one clock.

From it, tests compute what the workers themselves saw: moments where a stream ran on two
workers (I1), tokens that did not grow, or time a stream ran nowhere.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    t: float  # time.monotonic()
    worker: str
    incarnation: int
    kind: str  # start | stop | retoken
    stream: str
    token: int
    why: str = ""  # long-poll | heartbeat | conflict | fence | crash | shutdown


@dataclass(frozen=True)
class Interval:
    stream: str
    worker: str
    start: float
    end: float  # math.inf while still running
    token: int


class Journal:
    """Every start, stop and token change of every simulated worker, on one clock."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._seq = itertools.count()
        self._order: list[int] = []

    def add(self, record: Record) -> None:
        self.records.append(record)
        self._order.append(next(self._seq))

    @staticmethod
    def mark() -> float:
        return time.monotonic()

    def sorted(self) -> list[Record]:
        """Records by time; records with equal times keep the order they were added in."""
        pairs = sorted(zip(self.records, self._order, strict=True), key=lambda p: (p[0].t, p[1]))
        return [r for r, _ in pairs]

    def since(self, t: float, kind: str | None = None) -> list[Record]:
        return [r for r in self.sorted() if r.t >= t and (kind is None or r.kind == kind)]

    def intervals(self) -> dict[str, list[Interval]]:
        """Per stream, the time spans it ran on each worker."""
        open_: dict[tuple[str, str], tuple[float, int]] = {}
        out: dict[str, list[Interval]] = {}
        for r in self.sorted():
            key = (r.stream, r.worker)
            if r.kind == "start":
                if key in open_:  # a start while running is a bug of this module
                    raise AssertionError(f"{r.worker} started {r.stream} twice")
                open_[key] = (r.t, r.token)
            elif r.kind == "stop":
                start, token = open_.pop(key)
                out.setdefault(r.stream, []).append(Interval(r.stream, r.worker, start, r.t, token))
        for (stream, worker), (start, token) in open_.items():
            out.setdefault(stream, []).append(Interval(stream, worker, start, math.inf, token))
        for spans in out.values():
            spans.sort(key=lambda i: i.start)
        return out

    def overlaps(self) -> list[str]:
        """Every moment a stream ran on two workers at once (I1), described."""
        found = []
        for stream, spans in sorted(self.intervals().items()):
            for i, a in enumerate(spans):
                for b in spans[i + 1 :]:  # by start: b overlaps a iff it starts before a ends
                    if a.worker != b.worker and b.start < a.end:
                        found.append(
                            f"{stream}: on {a.worker} [{a.start:.3f}, {a.end:.3f}) token "
                            f"{a.token} and on {b.worker} [{b.start:.3f}, {b.end:.3f}) token "
                            f"{b.token}, {min(a.end, b.end) - b.start:.3f} s together"
                        )
        return found

    def token_regressions(self) -> list[str]:
        """Starts or token changes whose token is not above every earlier token of the stream."""
        best: dict[str, tuple[int, Record]] = {}
        found = []
        for r in self.sorted():
            if r.kind not in ("start", "retoken"):
                continue
            prev = best.get(r.stream)
            if prev is not None and r.token <= prev[0] and not _same_grant(prev[1], r):
                found.append(
                    f"{r.stream}: {r.worker} got token {r.token} after {prev[1].worker} had "
                    f"{prev[0]}"
                )
            if prev is None or r.token > prev[0]:
                best[r.stream] = (r.token, r)
        return found

    def uncovered(self, stream: str, since: float, until: float) -> float:
        """Seconds within [since, until) in which `stream` ran on no worker."""
        spans = sorted(
            (max(i.start, since), min(i.end, until))
            for i in self.intervals().get(stream, [])
            if i.end > since and i.start < until
        )
        covered, edge = 0.0, since
        for start, end in spans:
            if end <= edge:
                continue
            covered += end - max(start, edge)
            edge = end
        return (until - since) - covered

    def story(self, stream: str) -> list[str]:
        """The journal of one stream, one line per record (for failure reports)."""
        return [
            f"{r.t:.3f} {r.worker}#{r.incarnation} {r.kind} token {r.token} ({r.why})"
            for r in self.sorted()
            if r.stream == stream
        ]

    def starts_on(self, worker: str, since: float = 0.0) -> list[Record]:
        return [r for r in self.since(since, "start") if r.worker == worker]


def _same_grant(a: Record, b: Record) -> bool:
    # The same worker restarting a stream under the token it already held (after a
    # self-fence within a still valid lease) is not a regression.
    return a.worker == b.worker and a.token == b.token
