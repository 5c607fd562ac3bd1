"""Faults of the orchestrator's side — a replica, PostgreSQL, Redis — checked from the journals.

The same fleet as tests/chaos/test_worker_faults.py (200 streams, 6 SDK worker
processes). What the workers lived must show no stream in two processes at once and no
stream unowned for longer than LEASE_TTL + 2 s after its first placement.
"""

from __future__ import annotations

import pytest

from tests.chaos.conftest import Chaos

pytestmark = [pytest.mark.slow]


def test_sigkill_of_one_of_two_replicas_during_a_failover(chaos: Chaos):
    since = chaos.start(replicas=2)
    fleet = chaos.fleet
    assert fleet is not None
    s1, s2 = chaos.servers.servers

    chaos.servers.kill(s1)
    fleet.kill("w05")  # a failover that the surviving replica must run alone
    until = chaos.settle()

    chaos.check(since, until)
    assert s2.running
    with chaos.servers.client() as client:
        status = client.get("/v1/status").json()
    assert status["streams"]["assigned"] == len(chaos.keys)


def test_a_postgresql_restart_under_a_running_fleet(chaos: Chaos):
    since = chaos.start()
    fleet = chaos.fleet
    assert fleet is not None

    chaos.services.restart_postgres()
    chaos.settle()
    fleet.kill("w00")  # the reconciler works again: a failover after the restart
    until = chaos.settle()

    chaos.check(since, until)


def test_a_redis_restart_under_a_running_fleet(chaos: Chaos):
    since = chaos.start()
    fleet = chaos.fleet
    assert fleet is not None

    chaos.services.restart_redis()
    fleet.kill("w00")  # moves while Redis comes back: notifications may be lost
    until = chaos.settle()

    chaos.check(since, until)
