"""The dashboard's pure helpers: the activity chart, ages, worker kinds, shared values."""

from __future__ import annotations

import asyncio

import pytest

from streamorch.api.ui import security, views

pytestmark = pytest.mark.anyio


def row(minute: int, assigned: int = 0, moved: int = 0, expired: int = 0) -> dict:
    return {
        "minute": minute,
        "assigned": assigned,
        "moved": moved,
        "revoked": 0,
        "expired": expired,
    }


def test_chart_bars_fit_the_box_with_now_on_the_right():
    chart = views.chart([row(0, assigned=10), row(59, moved=5), row(30, expired=1)], 600, 90)
    assert chart.peak == 10
    assert chart.totals == {"assigned": 10, "moved": 5, "expired": 1, "revoked": 0}
    by_minute = {b.minute: b for b in chart.bars}
    assert by_minute[0].x > by_minute[30].x > by_minute[59].x  # older to the left
    for bar in chart.bars:
        assert 0 <= bar.x < 600
        assert 0 <= bar.y <= 90
        assert 1 <= bar.height <= 90
    assert by_minute[0].height == pytest.approx(88)  # the peak fills the box


def test_chart_of_a_quiet_hour_is_empty():
    chart = views.chart([])
    assert chart.bars == []
    assert chart.peak == 0


def test_ages_read_both_ways():
    assert views.age(95.0, now=100.0) == "5.0 s ago"
    assert views.age(130.0, now=100.0) == "in 30 s"
    assert views.age(100.0 - 3 * 3600, now=100.0) == "3 h ago"
    assert views.age(None) == "never"


def test_original_protocol_instances_are_told_from_sdk_workers():
    assert views.kind_of({"protocol": "compat"}) == "original"
    assert views.kind_of({"region": "eu"}) == "sdk"


async def test_a_shared_value_is_computed_once_for_concurrent_readers():
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return calls

    shared = views.Shared(60.0, compute)
    assert await asyncio.gather(*(shared.get() for _ in range(10))) == [1] * 10
    assert calls == 1
    shared.ttl = 0.0
    shared._expires = 0.0
    assert await shared.get() == 2


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/workers?show=all", "/ui/workers?show=all"),
        ("https://evil.example/ui", "/ui"),
        ("//evil.example/ui", "/ui"),
        ("/v1/streams", "/ui"),
        (None, "/ui"),
    ],
)
def test_sign_in_only_returns_to_dashboard_pages(target, expected):
    assert security.safe_next(target) == expected


def test_the_vendored_script_is_the_one_recorded():
    import hashlib
    import re
    from importlib import resources

    from streamorch.api.ui import templating

    static = resources.files("streamorch.api.ui") / "static"
    recorded = (static / "VENDORED.md").read_text()
    digest = hashlib.sha256((static / templating.HTMX).read_bytes()).hexdigest()
    assert f"`{templating.HTMX}`" in recorded
    assert re.search(rf"sha256 `{digest}`", recorded)
    assert (static / "htmx-LICENSE.txt").read_text().startswith("Zero-Clause BSD")
