"""/metrics: Prometheus text with request, engine, fleet, pool and service figures."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamorch.api.metrics import Metrics
from tests.support.fleet import Fleet
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


async def scrape(api) -> dict:
    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_metrics_cover_requests_engine_fleet_and_services(api):
    async with Fleet(api) as fleet:
        await fleet.start(2)
        for key in ("a", "b", "c"):
            await api.put(f"/v1/streams/{key}", json={"url": "http://x"})
        await fleet.wait_until(lambda: fleet.runs_exactly({"a", "b", "c"}), what="placed")
        await wait_until(lambda: all(w.heartbeats >= 2 for w in fleet.live), what="heartbeats")
        await api.get("/health")
        found = await scrape(api)

    assert value(
        found, "streamorch_http_requests_total", method="GET", route="/health", status="200"
    )
    heartbeat = "/v1/workers/{worker_id}/heartbeat"
    assert value(
        found, "streamorch_http_requests_total", method="POST", route=heartbeat, status="200"
    )
    assert value(found, "streamorch_heartbeats_total", result="ok") >= 4
    assert value(found, "streamorch_grants_total", reason="placed") == 3
    assert value(found, "streamorch_reconcile_pass_duration_seconds_count") > 0
    assert value(found, "streamorch_unassigned_streams") == 0
    assert value(found, "streamorch_streams", state="assigned") == 3
    assert value(found, "streamorch_workers", status="active") == 2
    assert value(found, "streamorch_fleet_capacity") == 40
    assert value(found, "streamorch_fleet_load") == 3
    assert value(found, "streamorch_fleet_balance") >= 1
    assert value(found, "streamorch_db_pool_connections", state="in_use") >= 0
    assert value(found, "streamorch_db_pool_connections", state="waiting") == 0
    assert value(found, "streamorch_service_up", service="redis") == 1
    assert value(found, "streamorch_service_up", service="postgresql") == 1
    assert value(found, "streamorch_optional_module_available", module="psutil") == 1
    assert value(found, "streamorch_event_loop_lag_seconds_count") > 0
    assert value(found, "streamorch_event_loop_lag_max_seconds") >= 0
    assert value(found, "streamorch_placement_settling") == 0
    # No raw path (one series per worker id) ever becomes a label.
    worker_id = fleet["w000"].worker_id
    assert worker_id
    assert not [k for k in found if worker_id in str(k)]


async def test_unknown_paths_share_one_series(api):
    for n in range(3):
        await api.get(f"/no/such/path/{n}")
    found = await scrape(api)
    assert (
        value(
            found, "streamorch_http_requests_total", method="GET", route="unmatched", status="404"
        )
        == 3
    )


def test_each_app_has_its_own_registry():
    first, second = Metrics(), Metrics()
    first.observe_request("GET", "/health", 200, 0.01)
    assert b'route="/health"' in first.render()
    assert b'route="/health"' not in second.render()


def test_every_metric_is_documented():
    from pathlib import Path

    guide = (Path(__file__).parents[2] / "docs" / "reference" / "metrics.md").read_text()
    names = {m.name for m in Metrics().registry.collect()}
    # Counters are collected under their name without `_total`: a prefix of the documented one.
    missing = sorted(n for n in names if f"`{n}" not in guide)
    assert missing == []


def test_a_failing_metric_never_breaks_a_reconcile_pass(caplog):
    metrics = Metrics()
    metrics.observe_pass(object(), 1.0)  # not a PassResult: recording fails, quietly
    assert [r.action for r in caplog.records] == ["metrics_failed"]
