"""Worker journals → ownership intervals → duplicates, gaps, convergence, moves, balance.

Every worker process appends one line per start and stop of a stream to its own file,
`<worker>.journal`, with `time.monotonic()` (CLOCK_MONOTONIC: one clock for every process
of the machine), the stream key and its fencing token. The harness that drives the fleet
appends what it did to the workers to `harness.journal`: `died` (a SIGKILLed process was
reaped: whatever it ran stopped then), `freeze` and `thaw` (SIGSTOP and SIGCONT).

Line format, tab-separated: `t  kind  stream  token  why` for a worker, `t  kind  worker`
for the harness. Writes are single `os.write` calls on an O_APPEND descriptor, so a
SIGKILL loses no record that was written.

A frozen process runs nothing, so a freeze cuts its intervals. After the thaw its streams
run again — from the thaw — unless its first act is to stop them (self-fencing) within
`resume_grace` seconds; then they are taken as never having run again.

Nothing here reads the server: these are the figures as the workers lived them.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

HARNESS = "harness"
SUFFIX = ".journal"
RESUME_GRACE_S = 1.0


@dataclass(frozen=True)
class Record:
    t: float
    worker: str
    kind: str  # worker: start | stop; harness: died | freeze | thaw | spawn | term | exit
    stream: str = ""
    token: int = 0
    why: str = ""


@dataclass(frozen=True)
class Interval:
    stream: str
    worker: str
    start: float
    end: float  # math.inf while still running
    token: int


@dataclass(frozen=True)
class Span:
    """A time span of one stream: `owners` is how many processes ran it."""

    stream: str
    start: float
    end: float
    owners: int

    @property
    def length(self) -> float:
        return self.end - self.start


# -- writing -------------------------------------------------------------------------


class Writer:
    """Appends records to one journal file; one `os.write` per record (SIGKILL-safe)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = Path(directory) / f"{name}{SUFFIX}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, kind: str, stream: str = "", token: int = 0, why: str = "") -> float:
        t = round(time.monotonic(), 6)  # as read back
        os.write(self._fd, f"{t:.6f}\t{kind}\t{stream}\t{token}\t{why}\n".encode())
        return t

    def close(self) -> None:
        os.close(self._fd)


# -- reading -------------------------------------------------------------------------


def parse(worker: str, text: str) -> list[Record]:
    """The complete lines of one journal (a line cut short by a kill is ignored)."""
    records = []
    for line in text.split("\n"):
        parts = line.split("\t")
        if len(parts) != 5:
            continue
        t, kind, stream, token, why = parts
        if worker == HARNESS:  # the harness names the worker in the stream column
            records.append(Record(float(t), stream, kind, why=why))
        else:
            records.append(Record(float(t), worker, kind, stream, int(token or 0), why))
    return records


def load(directory: Path) -> list[Record]:
    """Every record of every journal in `directory`, by time."""
    records: list[Record] = []
    for path in Path(directory).glob(f"*{SUFFIX}"):
        records += parse(path.name[: -len(SUFFIX)], path.read_text())
    return sorted(records, key=_order)


class Tail:
    """Reads the journals of a directory incrementally (for watching a running fleet)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._offsets: dict[Path, int] = {}
        self.records: list[Record] = []

    def poll(self) -> list[Record]:
        """New complete records since the last call (also appended to `records`)."""
        new: list[Record] = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1
            if end:
                self._offsets[path] = offset + end
                new += parse(path.name[: -len(SUFFIX)], chunk[:end].decode())
        new.sort(key=_order)
        self.records += new
        return new


class Watch:
    """Who runs what now, as the journals tell it, kept up to date incrementally."""

    def __init__(self, directory: Path) -> None:
        self.tail = Tail(directory)
        self.owners: dict[str, set[str]] = defaultdict(set)
        self.held: dict[str, set[str]] = defaultdict(set)
        self.last_change = time.monotonic()

    def poll(self) -> None:
        for r in self.tail.poll():
            if r.kind == "start":
                self.owners[r.stream].add(r.worker)
                self.held[r.worker].add(r.stream)
            elif r.kind == "stop":
                self.owners[r.stream].discard(r.worker)
                self.held[r.worker].discard(r.stream)
            elif r.kind == "died":
                for stream in self.held.pop(r.worker, set()):
                    self.owners[stream].discard(r.worker)
            else:
                continue
            self.last_change = max(self.last_change, r.t)

    def settled(self, keys: Iterable[str], live: list[str]) -> bool:
        """Every key on exactly one live worker, and loads within one stream."""
        if any(len(self.owners.get(k, ())) != 1 for k in keys):
            return False
        if any(streams for w, streams in self.held.items() if w not in live):
            return False
        loads = [len(self.held.get(w, ())) for w in live]
        return not loads or max(loads) - min(loads) <= 1

    def describe(self, keys: Iterable[str], live: list[str]) -> str:
        keys = list(keys)
        loads = sorted(len(self.held.get(w, ())) for w in live)
        unowned = sum(1 for k in keys if not self.owners.get(k))
        twice = sum(1 for k in keys if len(self.owners.get(k, ())) > 1)
        return f"{unowned} unowned, {twice} owned twice, loads {loads}"

    def wait(self, keys: Iterable[str], live: list[str], *, quiet: float, timeout: float) -> float:
        """Poll until settled with no change for `quiet` s; the instant, or TimeoutError."""
        keys = list(keys)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            self.poll()
            now = time.monotonic()
            if now - self.last_change >= quiet and self.settled(keys, live):
                return now
        raise TimeoutError(f"not settled within {timeout:g} s: {self.describe(keys, live)}")


def _order(r: Record) -> tuple[float, int]:
    # At equal times a death or freeze ends intervals before anything starts.
    return (r.t, 0 if r.worker and not r.stream else 1)


# -- intervals -----------------------------------------------------------------------


def intervals(
    records: Iterable[Record], *, resume_grace: float = RESUME_GRACE_S
) -> dict[str, list[Interval]]:
    """Per stream, the spans it ran in each worker process, sorted by start."""
    running: dict[str, dict[str, tuple[float, int]]] = defaultdict(dict)  # worker → stream →
    frozen: dict[str, dict[str, int]] = defaultdict(dict)  # worker → stream → token
    thawed_at: dict[str, float] = {}
    out: dict[str, list[Interval]] = defaultdict(list)

    def close(worker: str, stream: str, end: float) -> None:
        start, token = running[worker].pop(stream)
        out[stream].append(Interval(stream, worker, start, end, token))

    def resume(worker: str) -> None:
        at = thawed_at.pop(worker)
        for stream, token in frozen.pop(worker, {}).items():
            running[worker][stream] = (at, token)

    for r in sorted(records, key=_order):
        w = r.worker
        if w in thawed_at and not (r.kind == "stop" and r.stream in frozen[w]):
            resume(w)  # its first act was something else: the frozen streams ran again
        if w in thawed_at and r.t > thawed_at[w] + resume_grace:
            resume(w)
        if r.kind == "start":
            if r.stream in running[w]:
                raise ValueError(f"{w} started {r.stream} twice without a stop")
            running[w][r.stream] = (r.t, r.token)
        elif r.kind == "stop":
            if r.stream in running[w]:
                close(w, r.stream, r.t)
            elif r.stream in frozen[w]:
                del frozen[w][r.stream]  # stopped as the first act after the thaw
            else:
                raise ValueError(f"{w} stopped {r.stream}, which it did not run")
        elif r.kind == "died":
            for stream in list(running[w]):
                close(w, stream, r.t)
            frozen.pop(w, None)
            thawed_at.pop(w, None)
        elif r.kind == "freeze":
            for stream in list(running[w]):
                token = running[w][stream][1]
                close(w, stream, r.t)
                frozen[w][stream] = token
        elif r.kind == "thaw":
            thawed_at[w] = r.t
    for w in list(thawed_at):
        resume(w)
    for w, streams in running.items():
        for stream, (start, token) in streams.items():
            out[stream].append(Interval(stream, w, start, math.inf, token))
    for spans in out.values():
        spans.sort(key=lambda i: (i.start, i.worker))
    return dict(out)


def timeline(spans: list[Interval], since: float, until: float) -> list[Span]:
    """How many processes ran one stream, piecewise over [since, until)."""
    if not spans:
        return []
    stream = spans[0].stream
    edges: list[tuple[float, int]] = []
    for i in spans:
        edges.append((i.start, +1))
        edges.append((i.end, -1))
    edges.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    out: list[Span] = []
    owners, at = 0, since
    for t, step in edges:
        t = min(max(t, since), until)
        if t > at:
            out.append(Span(stream, at, t, owners))
            at = t
        owners += step
    if until > at:
        out.append(Span(stream, at, until, owners))
    return out


# -- figures -------------------------------------------------------------------------


@dataclass
class Figures:
    """What one window of time looked like from the journals."""

    since: float
    until: float
    starts: int = 0
    stops: int = 0
    first_placements: int = 0  # starts of streams that had never run before
    replaced: set[str] = field(default_factory=set)  # started again after running elsewhere
    last_change: float | None = None
    duplicates: list[Span] = field(default_factory=list)
    gaps: list[Span] = field(default_factory=list)

    @property
    def converge_s(self) -> float | None:
        return None if self.last_change is None else self.last_change - self.since

    @property
    def duplicate_streams(self) -> int:
        return len({s.stream for s in self.duplicates})

    @property
    def duplicate_s(self) -> float:
        return sum(s.length for s in self.duplicates)

    @property
    def longest_duplicate_s(self) -> float:
        return max((s.length for s in self.duplicates), default=0.0)

    @property
    def longest_gap_s(self) -> float:
        return max((s.length for s in self.gaps), default=0.0)

    def summary(self) -> dict[str, float | int | None]:
        return {
            "converge_s": self.converge_s,
            "starts": self.starts,
            "stops": self.stops,
            "first_placements": self.first_placements,
            "replaced": len(self.replaced),
            "duplicate_streams": self.duplicate_streams,
            "duplicate_s": round(self.duplicate_s, 6),
            "longest_duplicate_s": round(self.longest_duplicate_s, 6),
            "gaps": len(self.gaps),
            "longest_gap_s": round(self.longest_gap_s, 6),
        }


def figures(
    records: list[Record],
    since: float,
    until: float,
    *,
    resume_grace: float = RESUME_GRACE_S,
) -> Figures:
    """Changes, duplicates and gaps within [since, until).

    A gap is a span in which a stream that had already run somewhere ran nowhere; the
    wait before a stream's very first start is placement, not a gap.
    """
    fig = Figures(since, until)
    seen: set[str] = set()
    for r in sorted(records, key=_order):
        if r.kind not in ("start", "stop"):
            continue
        if since <= r.t < until:
            fig.last_change = r.t
            if r.kind == "stop":
                fig.stops += 1
            elif r.stream in seen:
                fig.starts += 1
                fig.replaced.add(r.stream)
            else:
                fig.starts += 1
                fig.first_placements += 1
        if r.kind == "start":
            seen.add(r.stream)
    for spans in intervals(records, resume_grace=resume_grace).values():
        first = spans[0].start
        for span in timeline(spans, since, until):
            if span.owners >= 2:
                fig.duplicates.append(span)
            elif span.owners == 0 and span.start >= first:
                fig.gaps.append(span)
    return fig


def owners_at(records: list[Record], t: float) -> dict[str, list[str]]:
    """Stream → the processes running it at instant `t`."""
    out: dict[str, list[str]] = {}
    for stream, spans in intervals(records).items():
        who = [i.worker for i in spans if i.start <= t < i.end]
        if who:
            out[stream] = who
    return out


def balance(owners: Mapping[str, list[str]], workers: Iterable[str]) -> dict[str, float]:
    """Streams per live worker at one instant: max, mean and max/mean."""
    load = dict.fromkeys(workers, 0)
    for who in owners.values():
        for w in who:
            if w in load:
                load[w] += 1
    if not load:
        return {"max": 0, "min": 0, "mean": 0.0, "max_over_mean": math.nan}
    mean = sum(load.values()) / len(load)
    top = max(load.values())
    return {
        "max": top,
        "min": min(load.values()),
        "mean": round(mean, 3),
        "max_over_mean": round(top / mean, 4) if mean else math.nan,
    }


def overlaps(records: list[Record], *, resume_grace: float = RESUME_GRACE_S) -> list[str]:
    """Every moment a stream ran in two processes at once (I1), described for a failure."""
    found = []
    for stream, spans in sorted(intervals(records, resume_grace=resume_grace).items()):
        for i, a in enumerate(spans):
            for b in spans[i + 1 :]:
                if a.worker != b.worker and b.start < a.end:
                    found.append(
                        f"{stream}: {a.worker} [{a.start:.3f}, {a.end:.3f}) token {a.token} "
                        f"and {b.worker} [{b.start:.3f}, {b.end:.3f}) token {b.token}: "
                        f"{min(a.end, b.end) - b.start:.3f} s together"
                    )
    return found


def story(records: list[Record], stream: str) -> list[str]:
    """One stream's journal lines (with the harness's), for a failure report."""
    return [
        f"{r.t:.3f} {r.worker} {r.kind} {r.stream} token {r.token} {r.why}".rstrip()
        for r in sorted(records, key=_order)
        if r.stream == stream or not r.stream
    ]


def violations(
    records: list[Record],
    keys: Iterable[str],
    *,
    since: float,
    until: float,
    max_gap: float,
    resume_grace: float = RESUME_GRACE_S,
) -> list[str]:
    """What a fleet must never show, described: a stream in two processes at once (I1), and
    a stream of `keys` that had run and then ran nowhere for longer than `max_gap` within
    [since, until) (the caller picks a window in which the fleet had room for it)."""
    problems = overlaps(records, resume_grace=resume_grace)
    spans_of = intervals(records, resume_grace=resume_grace)
    for key in sorted(keys):
        spans = spans_of.get(key)
        if not spans:
            problems.append(f"{key}: never ran")
            continue
        for span in timeline(spans, since, until):
            if span.owners == 0 and span.start >= spans[0].start and span.length > max_gap:
                problems.append(
                    f"{key}: ran nowhere for {span.length:.3f} s "
                    f"[{span.start:.3f}, {span.end:.3f}) (at most {max_gap:g} s allowed)"
                )
    return problems
