"""A real fleet for the chaos tests: server processes, one OS process per SDK worker.

Every worker journals its starts and stops (tests/support/journal.py); every fault the
test injects is journaled by the harness on the same monotonic clock. `Chaos.check`
asserts from those journals alone that no stream ever ran in two processes at once and
that no stream, once placed, ran nowhere for longer than LEASE_TTL + 2 s.

PostgreSQL and Valkey are this package's own (a test restarts them), started once.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import journal
from tests.support.cluster import Servers, Services
from tests.support.processes import ProcessFleet

LEASE_TTL = 3.0
ENGINE = {"LEASE_TTL": "3", "HEARTBEAT_INTERVAL": "0.5", "RECONCILE_INTERVAL": "0.25"}
MAX_GAP = LEASE_TTL + 2.0
STREAMS = 200
WORKERS = 6
QUIET = 1.5  # seconds without a start or stop that end a settle
SETTLE_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def chaos_services() -> Iterator[Services]:
    root = Path(tempfile.mkdtemp(prefix="streamorch-chaos-"))
    root.chmod(0o755)  # under root the embedded PostgreSQL runs as another user
    services = Services(root / "data")
    try:
        services.start()
        yield services
    finally:
        services.stop()
        shutil.rmtree(root, ignore_errors=True)


class Chaos:
    """One test's servers and worker processes, and the checks on their journals."""

    def __init__(self, workdir: Path, services: Services) -> None:
        self.services = services
        self.servers = Servers(workdir, services.create_database(), services.redis_url, ENGINE)
        self.keys = [f"chaos/{i:03d}" for i in range(STREAMS)]
        self.capacity = math.ceil(1.5 * STREAMS / WORKERS)
        self.journal_dir = workdir / "journal"
        self.fleet: ProcessFleet | None = None
        self.watch = journal.Watch(self.journal_dir)

    def start(self, replicas: int = 1) -> float:
        """Servers, the streams, WORKERS processes (all at once); returns when settled."""
        started = [self.servers.start() for _ in range(replicas)]
        self.servers.wait_ready(*started)
        body = {"streams": [{"key": k, "url": f"http://radio.example/{k}"} for k in self.keys]}
        with self.servers.client() as client:
            response = client.post("/v1/streams/bulk", json=body)
            assert response.status_code == 200, response.text
        self.fleet = ProcessFleet(
            self.journal_dir, [s.url for s in started], capacity=self.capacity, drain_timeout=20
        )
        names = [f"w{i:02d}" for i in range(WORKERS)]
        if replicas == 1:
            self.fleet.start(names)
        else:  # half the fleet talks to each replica first
            urls = [s.url for s in started]
            first = self.fleet.spawn(names[::2], urls)
            self.fleet.go(first + self.fleet.spawn(names[1::2], urls[::-1]))
        return self.settle()

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> float:
        """Every stream on exactly one live worker, loads even, nothing moving."""
        assert self.fleet is not None
        try:
            return self.watch.wait(self.keys, self.fleet.live, quiet=QUIET, timeout=timeout)
        except TimeoutError as exc:
            self.explain(self.fleet.records(), [])
            raise AssertionError(str(exc)) from None

    def check(self, since: float, until: float) -> None:
        """I1 over the whole run; no stream unowned > LEASE_TTL + 2 s in [since, until)."""
        assert self.fleet is not None
        records = self.fleet.records()
        problems = journal.violations(records, self.keys, since=since, until=until, max_gap=MAX_GAP)
        if problems:
            self.explain(records, problems)
        assert problems == [], f"{len(problems)} problems:\n" + "\n".join(problems[:20])

    def explain(self, records: list[journal.Record], problems: list[str]) -> None:
        """Print the journal and the events log of a few streams in trouble, and the logs."""
        assert self.fleet is not None
        for stream in sorted({p.split(":")[0] for p in problems})[:3]:
            print(f"=== {stream}: journals")
            print("\n".join(journal.story(records, stream)))
            print(f"=== {stream}: events")
            try:
                for e in self.servers.events(stream):
                    print(e["id"], e["at"], e["kind"], e["worker"], e["reason"], e["details"])
            except (httpx.HTTPError, IndexError) as exc:
                print(f"(events unavailable: {exc!r})")
        print(self.servers.logs(60))
        print(self.fleet.logs(lines=15))

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.close()
        self.servers.close()


@pytest.fixture
def chaos(tmp_path: Path, chaos_services: Services) -> Iterator[Chaos]:
    run = Chaos(tmp_path, chaos_services)
    try:
        yield run
    finally:
        run.close()
