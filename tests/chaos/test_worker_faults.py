"""Faults of worker processes, and a CPU hog beside the server, checked from the journals.

Each test starts 200 streams on 6 SDK worker processes (all at once), injects its fault,
waits until the fleet settled again, and then asserts from the workers' own journals
that no stream ever ran in two processes at once and that no stream ran nowhere for
longer than LEASE_TTL + 2 s after the first placement (the fleet always has room: the
capacity of the survivors covers every stream).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.chaos.conftest import LEASE_TTL, Chaos
from tests.support.waiting import wait_until_sync as wait_until

pytestmark = [pytest.mark.slow]


def test_sigkilled_workers_lose_their_streams_to_the_survivors_and_nothing_runs_twice(
    chaos: Chaos,
):
    since = chaos.start()
    fleet = chaos.fleet
    assert fleet is not None

    fleet.kill("w00")
    fleet.kill("w01")
    chaos.settle()
    # A join while a third worker dies: moves to the newcomer and failover at once.
    joiner = fleet.spawn(["w06"])
    fleet.kill("w02")
    fleet.go(joiner)
    until = chaos.settle()

    chaos.check(since, until)
    assert sorted(fleet.live) == ["w03", "w04", "w05", "w06"]
    assert chaos.watch.held["w06"], "the newcomer got a share"


def test_a_frozen_worker_fences_itself_before_it_runs_anything_the_others_took_over(
    chaos: Chaos,
):
    """SIGSTOP past its lease, then SIGCONT: its first act must be to stop every stream.

    A stopped process runs nothing, so its streams are not counted while it is frozen;
    from the thaw they count as running unless it stops them before doing anything else
    (the journal analysis's `resume_grace`), and the checker would see them twice.
    """
    since = chaos.start()
    fleet = chaos.fleet
    assert fleet is not None
    held = set(chaos.watch.held["w00"])
    assert held

    frozen_at = fleet.freeze("w00")

    def taken_over() -> bool:
        chaos.watch.poll()
        return all(chaos.watch.owners[k] - {"w00"} for k in held)

    wait_until(taken_over, timeout=10 * LEASE_TTL, what="the frozen worker's streams re-owned")
    time.sleep(max(0.0, frozen_at + LEASE_TTL - time.monotonic()))  # past its lease, surely
    thawed_at = fleet.thaw("w00")
    until = chaos.settle()

    chaos.check(since, until)
    records = [r for r in fleet.records() if r.worker == "w00" and r.stream]
    assert not [r for r in records if frozen_at <= r.t < thawed_at], "it ran while stopped"
    stops = [r for r in records if r.kind == "stop" and r.t >= thawed_at and r.stream in held]
    assert {r.stream for r in stops} == held
    assert {r.why for r in stops} == {"fence"}, "stopped by its self-fencing"
    assert "w00" in fleet.live


@pytest.mark.timeout(240)
def test_a_cpu_hog_beside_the_server_costs_no_duplicate_and_no_long_gap(chaos: Chaos):
    """Two busy loops share the server's CPU with it while a worker dies and one joins."""
    since = chaos.start()
    fleet = chaos.fleet
    assert fleet is not None
    server = chaos.servers.running[0]
    joiner = fleet.spawn(["w06"])
    core = {min(os.sched_getaffinity(0))}
    os.sched_setaffinity(server.proc.pid, core)
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(2)
    ]
    try:
        for hog in hogs:
            os.sched_setaffinity(hog.pid, core)
        time.sleep(LEASE_TTL)  # the load itself is the fault: let it act for one lease
        fleet.kill("w00")
        fleet.go(joiner)
        chaos.settle(timeout=120)
    finally:
        for hog in hogs:
            hog.send_signal(signal.SIGKILL)
            hog.wait(timeout=10)
    until = chaos.settle()

    chaos.check(since, until)
    assert chaos.watch.held["w06"], "the newcomer got a share"
