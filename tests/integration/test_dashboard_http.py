"""The dashboard over plain HTTP against the real app: security headers on every answer,
CSRF refusals, escaping of hostile input, sign-in with the admin token, and pages that
show what the API says. The browser tests (tests/browser) cover what needs a browser."""

from __future__ import annotations

import re

import pytest

from streamorch.api.ui import security
from tests.asgi import serving
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


@pytest.fixture
def engine_settings(make_settings, postgres_server, database, redis_url):
    """Leases long enough that no worker registered here expires during a test."""
    return make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=redis_url,
        LEASE_TTL="30",
        RECONCILE_INTERVAL="0.1",
    )


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


async def register(api, name: str, **body) -> str:
    response = await api.post("/v1/workers/register", json={"name": name, **body})
    assert response.status_code == 201, response.text
    return response.json()["worker_id"]


@pytest.mark.parametrize(
    "path",
    ["/ui", "/ui/workers", "/ui/streams", "/ui/events", "/ui/nowhere", "/ui/static/app.css"],
)
async def test_every_dashboard_answer_carries_the_security_headers(api, path):
    response = await api.get(path)
    assert response.status_code == (404 if path == "/ui/nowhere" else 200)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_root_redirects_to_the_dashboard_and_pages_use_no_inline_script(api):
    response = await api.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/ui"
    html = (await api.get("/ui")).text
    # Scripts only from /ui/static, no inline handlers or styles (the CSP would block them).
    assert re.findall(r"<script[^>]*>", html) == [
        '<script src="/ui/static/htmx-2.0.11.min.js" defer>'
    ]
    assert not re.search(r"\son[a-z]+=", html)
    assert " style=" not in html


async def test_the_vendored_script_and_its_licence_are_served(api):
    script = await api.get("/ui/static/htmx-2.0.11.min.js")
    assert script.status_code == 200
    assert "htmx" in script.text
    assert (await api.get("/ui/static/htmx-LICENSE.txt")).status_code == 200


async def test_hostile_labels_urls_and_names_are_escaped(api):
    # Created in bulk: as a URL path, the key's '..' would be resolved away by the client.
    stream = {"url": HOSTILE, "labels": {"note": HOSTILE}, "requires": {"zone": HOSTILE}}
    put = await api.post("/v1/streams/bulk", json={"streams": [{"key": "x/../y", **stream}]})
    assert put.status_code == 200, put.text
    worker_id = await register(api, "w-1", labels={"team": HOSTILE})
    pages = [
        await api.get("/ui/streams"),
        await api.get("/ui/streams", params={"q": HOSTILE}),
        await api.get("/ui/stream", params={"key": "x/../y"}),
        await api.get(f"/ui/workers/{worker_id}"),
        await api.get("/ui/workers"),
        await api.get("/ui/events", params={"kind": HOSTILE, "stream": HOSTILE}),
        await api.get("/ui/explain", params={"key": "x/../y"}),
    ]
    for page in pages:
        assert page.status_code == 200, page.text
        assert "<script>alert" not in page.text
        assert "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[2].text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[3].text
    # The key travels in a query string, so '..' in it cannot walk the URL's path.
    assert 'href="/ui/stream?key=x%2F..%2Fy' in pages[0].text


async def test_actions_without_the_csrf_token_are_refused_and_change_nothing(api):
    await api.put("/v1/streams/s1", json={"url": "http://x"})
    worker_id = await register(api, "w-1")
    page = await api.get("/ui/stream", params={"key": "s1"})
    token = csrf_of(page.text)

    missing = await api.post("/ui/stream", data={"key": "s1", "action": "delete"})
    wrong = await api.post("/ui/stream", data={"key": "s1", "action": "delete", "csrf": "forged"})
    drain = await api.post(f"/ui/workers/{worker_id}/drain", data={})
    cross_site = await api.post(
        "/ui/stream",
        data={"key": "s1", "action": "disable", "csrf": token},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    other_origin = await api.post(
        "/ui/stream",
        data={"key": "s1", "action": "disable", "csrf": token},
        headers={"Origin": "https://evil.example"},
    )
    for refused in (missing, wrong, drain, cross_site, other_origin):
        assert refused.status_code == 403
        assert "CSRF" in refused.text
        assert "Content-Security-Policy" in refused.headers
    assert (await api.get("/v1/streams/s1")).json()["enabled"] is True
    workers = (await api.get("/v1/workers")).json()["items"]
    assert [w["status"] for w in workers] == ["active"]

    # With the token from the page (and the cookie set with it), the same action works.
    done = await api.post("/ui/stream", data={"key": "s1", "action": "disable", "csrf": token})
    assert done.status_code == 303
    assert (await api.get("/v1/streams/s1")).json()["enabled"] is False


async def test_stream_and_worker_actions(api):
    await api.put("/v1/streams/s1", json={"url": "http://x"})
    worker_id = await register(api, "w-1")
    token = csrf_of((await api.get(f"/ui/workers/{worker_id}")).text)

    drained = await api.post(f"/ui/workers/{worker_id}/drain", data={"csrf": token})
    assert drained.status_code == 303
    assert (await api.get("/v1/workers")).json()["items"][0]["status"] == "draining"
    page = await api.get(drained.headers["location"])
    assert 'id="worker-status"><span class="badge badge-draining">' in page.text

    bad = await api.post("/ui/stream", data={"key": "s1", "action": "explode", "csrf": token})
    assert bad.status_code == 422
    gone = await api.post("/ui/stream", data={"key": "nope", "action": "delete", "csrf": token})
    assert gone.status_code == 404
    deleted = await api.post("/ui/stream", data={"key": "s1", "action": "delete", "csrf": token})
    assert deleted.status_code == 303
    assert (await api.get("/v1/streams/s1")).status_code == 404


async def test_overview_shows_the_status_numbers(api):
    await api.post(
        "/v1/streams/bulk",
        json={"streams": [{"key": f"s{i}", "url": "http://x"} for i in range(5)]},
    )
    await api.put("/v1/streams/off", json={"url": "http://x", "enabled": False})
    await register(api, "w-1", capacity=3)

    async def placed() -> bool:  # the worker takes 3 of the 5: then nothing changes
        return (await api.get("/v1/status")).json()["streams"]["assigned"] == 3

    await wait_until(placed, what="3 streams assigned")
    html = (await api.get("/ui")).text
    status = (await api.get("/v1/status")).json()
    assert status["streams"]["unassigned"] == 2
    for field in ("enabled", "disabled", "assigned", "moving", "unassigned"):
        assert f'id="streams-{field}">{status["streams"][field]}<' in html
    assert f'id="workers-active">{status["workers"]["active"]}<' in html
    assert 'id="open-warning"' in html  # no tokens: the log's warning is on every page


async def test_fragments_answer_alone_for_polling(api):
    fragment = await api.get("/ui", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert fragment.text.startswith('<div id="live"')
    assert "<html" not in fragment.text
    assert '<section id="recent" aria-labelledby="h-recent" hx-swap-oob="true">' in fragment.text
    chart = await api.get("/ui/activity", headers={"HX-Request": "true"})
    assert chart.status_code == 200
    assert chart.text.startswith('<div id="activity"')
    assert "<svg" in chart.text


@pytest.fixture
async def tokened(make_settings, postgres_server, database, redis_url):
    settings = make_settings(
        DATABASE_URL=postgres_server.url(database),
        REDIS_URL=redis_url,
        STREAMORCH_ADMIN_TOKEN="admin-secret",
    )
    async with serving(settings) as client:
        yield client


async def test_with_tokens_the_dashboard_asks_for_the_admin_token(tokened):
    api = tokened
    first = await api.get("/ui/workers")
    assert first.status_code == 303
    assert first.headers["location"] == "/ui/login?next=%2Fui%2Fworkers"
    login = await api.get(first.headers["location"])
    assert 'id="open-warning"' not in login.text
    token = csrf_of(login.text)

    wrong = await api.post("/ui/login", data={"token": "nope", "csrf": token, "next": "/ui"})
    assert wrong.status_code == 401
    assert security.SESSION_COOKIE not in api.cookies
    forged = await api.post("/ui/login", data={"token": "admin-secret", "next": "/ui"})
    assert forged.status_code == 403

    ok = await api.post(
        "/ui/login", data={"token": "admin-secret", "csrf": token, "next": "https://evil.example"}
    )
    assert ok.status_code == 303
    assert ok.headers["location"] == "/ui"  # never off the dashboard
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/ui" in cookie
    assert "admin-secret" not in cookie
    assert (await api.get("/ui/workers")).status_code == 200
    assert (await api.get("/ui/workers", headers={"HX-Request": "true"})).status_code == 200

    out = await api.post("/ui/logout", data={"csrf": token})
    assert out.status_code == 303
    assert (await api.get("/ui")).status_code == 303
    # An action after the session ended changes nothing and leads to the sign-in page.
    stale = await api.post("/ui/stream", data={"key": "a", "action": "delete", "csrf": token})
    assert stale.status_code == 303
    assert stale.headers["location"] == "/ui/login?next=%2Fui"


def test_sessions_are_signed_and_expire():
    value = security.new_session("t", now=1000.0)
    assert security.valid_session("t", value, now=1001.0)
    assert not security.valid_session("other", value, now=1001.0)
    assert not security.valid_session("t", value, now=1000.0 + security.SESSION_LIFETIME_S + 1)
    expires, nonce, signature = value.split(".")
    forged = f"{int(expires) + 999}.{nonce}.{signature}"
    assert not security.valid_session("t", forged, now=1001.0)
    assert not security.valid_session("t", "garbage", now=1001.0)


async def test_an_exposed_api_without_tokens_shows_the_logs_warning(
    make_settings, postgres_server, database, redis_url
):
    from streamorch.ops.exposure import open_api_warning

    settings = make_settings(
        DATABASE_URL=postgres_server.url(database), REDIS_URL=redis_url, ORCHESTRATOR_HOST="0.0.0.0"
    )
    async with serving(settings) as client:
        html = (await client.get("/ui/streams")).text
    assert open_api_warning(settings).replace("'", "&#39;") in html
    assert "THE API IS OPEN: listening on 0.0.0.0" in html
