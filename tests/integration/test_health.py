"""/health, /ready and /health/detailed against real PostgreSQL and Redis."""

from __future__ import annotations

import io
import json
import logging
import socket

import httpx
import psycopg
import pytest

from streamorch.api.app import create_app
from streamorch.logs import configure_logging
from streamorch.store import migrations
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def healthy(api: httpx.AsyncClient) -> dict:
    """/health once the first reconcile pass has run (before it, the reconciler is starting)."""
    body: dict = {}

    async def passed() -> bool:
        body.update((await api.get("/health")).json())
        return body["reconciler"]["status"] == "ready" and body["server_load"]["status"] == "ready"

    await wait_until(passed, timeout=30, what="a reconcile pass")
    return body


async def test_health_reports_every_component(api, postgres_server, database):
    await api.put("/v1/streams/s1", json={"url": "http://x"})
    body = await healthy(api)
    assert body["status"] == "healthy"
    pg = body["services"]["postgresql"]
    assert pg["status"] == "ready"
    assert pg["latency_ms"] > 0
    assert pg["details"]["server_version"]
    assert pg["details"]["schema_version"] == migrations.expected_version()
    assert pg["details"]["operations"]["write_read"] == "ok"
    redis = body["services"]["redis"]
    assert redis["status"] == "ready"
    assert redis["details"]["server_version"]
    assert redis["details"]["uptime_s"] >= 0
    assert redis["details"]["connected_clients"] >= 1
    assert redis["details"]["operations"]["set_get_ttl"] == "ok"
    reconciler = body["reconciler"]
    assert reconciler["last_pass_age_s"] < reconciler["stale_after_s"]
    assert reconciler["last_duration_ms"] is not None
    load = body["server_load"]
    assert load["lease_margin_s"] == 1.2  # LEASE_TTL 1.5 − HEARTBEAT_INTERVAL 0.3
    assert load["event_loop_lag_s"] >= 0
    assert load["event_loop_lag_max_s"] >= 0
    assert body["application_components"]["psutil"]["status"] == "available"
    assert body["system_metrics"]["memory_percent"] > 0
    assert body["details"]["streams"]["enabled"] == 1
    assert body["details"]["startup_complete"] is True
    assert body["errors"] == []
    # The operations test rolls its write back.
    with psycopg.connect(postgres_server.conninfo(database)) as conn:
        left = conn.execute("SELECT count(*) FROM events WHERE kind = 'health_probe'").fetchone()
    assert left == (0,)


async def test_ready_answers_from_postgres_and_startup(api):
    response = await api.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["services"]["postgresql"]["status"] == "ready"
    assert body["services"]["orchestrator"]["startup_complete"] is True
    # A stopping application is no longer ready, and says why.
    api.app.state.runtime.ready = False
    try:
        response = await api.get("/ready")
    finally:
        api.app.state.runtime.ready = True
    assert response.status_code == 503
    assert response.json()["services"]["orchestrator"]["code"] == "startup.not_finished"


async def test_outdated_schema_is_not_ready(api, postgres_server, database):
    with psycopg.connect(postgres_server.conninfo(database), autocommit=True) as conn:
        conn.execute(
            "DELETE FROM schema_migrations WHERE version = %s", (migrations.expected_version(),)
        )
    # /ready may answer from a probe of the last second: within a second it must see it.
    response = await api.get("/ready")

    async def unready() -> bool:
        nonlocal response
        response = await api.get("/ready")
        return response.status_code == 503

    await wait_until(unready, timeout=30, what="/ready 503")
    pg = response.json()["services"]["postgresql"]
    assert pg["details"]["code"] == "postgres.schema_outdated"
    assert "streamorch migrate" in pg["suggestion"]
    health = await api.get("/health")
    assert health.status_code == 503
    assert health.json()["errors"][0]["code"] == "postgres.schema_outdated"


async def test_read_only_database_is_unhealthy(make_settings, postgres_server, database, redis_url):
    with psycopg.connect(postgres_server.admin_conninfo, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    settings = make_settings(DATABASE_URL=postgres_server.url(database), REDIS_URL=redis_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://o") as client:
            response = await client.get("/health")
            ready = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["services"]["postgresql"]["details"]["code"] == "postgres.read_only"
    assert "primary" in body["services"]["postgresql"]["suggestion"]
    assert ready.status_code == 200  # it answers and reads; writes are what fail


async def test_redis_down_is_degraded_but_ready(make_settings, postgres_server, database):
    settings = make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://o") as client:
            response = await client.get("/health")
            await wait_until(
                lambda: app.state.runtime.monitors["redis"].available is False, timeout=30
            )
            ready = await client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["degraded"] == ["redis"]
    assert body["services"]["redis"]["details"]["code"] == "redis.unreachable"
    assert body["errors"][0]["service"] == "redis"
    assert "start Redis" in body["errors"][0]["suggestion"]
    assert ready.status_code == 200
    assert ready.json()["services"]["redis"]["details"]["code"] == "redis.unreachable"


async def test_redis_required_and_down_is_not_ready(make_settings, postgres_server, database):
    settings = make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0",
        REDIS_REQUIRED="true",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://o") as client:
            await wait_until(
                lambda: app.state.runtime.monitors["redis"].available is False, timeout=30
            )
            ready = await client.get("/ready")
            response = await client.get("/health")
    assert ready.status_code == 503
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"


async def test_detailed_diagnostics(api, engine_settings):
    await api.put("/v1/streams/s1", json={"url": "http://x", "requires": {"region": "mars"}})
    await api.post("/v1/workers/register", json={"name": "w1", "capacity": 4})
    await healthy(api)
    response = await api.get("/health/detailed")
    assert response.status_code == 200
    body = response.json()
    config = body["configuration"]["values"]
    assert config["DATABASE_URL"] == "set"
    assert config["STREAMORCH_ADMIN_TOKEN"] == "unset"
    assert engine_settings.database_url.get_secret_value() not in response.text
    assert body["timeouts_s"]["ready_check"] <= 2
    assert body["timeouts_s"]["lease_ttl"] == engine_settings.lease_ttl
    assert body["history"]["postgresql"]["samples"] > 0
    assert body["history"]["redis"]["recent"][-1]["ok"] is True
    internals = body["orchestrator"]
    assert [w["name"] for w in internals["workers"]] == ["w1"]
    assert internals["moves_in_flight"]["count"] == 0
    assert internals["last_failovers"] == []
    assert any("unassigned" in w for w in body["warnings"])
    assert any("explain" in r for r in body["recommendations"])
    assert not any("LEASE_TTL" in r for r in body["recommendations"])  # 5 heartbeats: fine


async def test_request_ids_reach_the_response_and_the_logs(api):
    given = await api.get("/ready", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = await api.get("/ready")
    assert len(made.headers["X-Request-ID"]) == 32
    odd = await api.get("/ready", headers={"X-Request-ID": "x" * 500})
    assert odd.headers["X-Request-ID"] != "x" * 500

    async def speaks() -> dict:
        logging.getLogger("streamorch.test").info("inside", extra={"action": "test_log"})
        return {}

    api.app.add_api_route("/test-log/{worker_id}", speaks)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("INFO", "structured", stream=out)
    try:
        await api.get("/test-log/w-7", headers={"X-Request-ID": "req-42"})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    mine = [r for r in records if r.get("action") == "test_log"]
    assert mine
    assert mine[0]["request_id"] == "req-42"
    assert mine[0]["worker"] == "w-7"


async def test_an_unexpected_error_is_logged_with_its_request_id(api, caplog):
    async def broken() -> dict:
        raise RuntimeError("boom")

    api.app.add_api_route("/test-broken", broken)
    response = await api.get("/test-broken", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal"
    failed = [r for r in caplog.records if getattr(r, "action", None) == "request_failed"]
    assert len(failed) == 1
    assert failed[0].getMessage() == "request failed: GET /test-broken"
    assert failed[0].request_id == "req-500"
    assert failed[0].exc_info is not None


async def test_a_reconciler_that_meets_a_bug_is_reported_at_once_and_recovers(
    api, monkeypatch, caplog
):
    """A bug in a pass (not a store failure): /health says so at once, heartbeats are still
    served (/ready stays 200), and once the pass no longer fails the loop runs again (ADR 0020)."""
    from streamorch.core import engine

    def broken_plan(snapshot, policy):
        raise RuntimeError("placement bug")

    await healthy(api)
    monkeypatch.setattr(engine, "plan_paused", broken_plan)
    await api.put("/v1/streams/needs-a-plan", json={"url": "http://x"})

    async def failed() -> bool:
        return (await api.get("/health")).json()["reconciler"]["status"] == "failed"

    await wait_until(failed, timeout=30, what="the reconciler to report its failure")
    health = (await api.get("/health")).json()
    assert "reconciler" in health["degraded"]
    assert health["reconciler"]["code"] == "reconciler.failed"
    assert "placement bug" in json.dumps(health["reconciler"])
    assert any("placement bug" in (r.exc_text or "") for r in caplog.records)
    assert (await api.get("/ready")).status_code == 200
    metrics = (await api.get("/metrics")).text
    assert "streamorch_reconciler_failed 1.0" in metrics

    monkeypatch.undo()  # the bug is gone (in life: the data that met it changed)
    body = await healthy(api)  # the reconciler reports ready again
    assert "reconciler" not in body["degraded"]
    metrics = (await api.get("/metrics")).text
    assert "streamorch_reconciler_failed 0.0" in metrics
