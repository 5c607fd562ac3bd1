"""The dashboard in a real browser (headless Debian Chromium through Selenium).

Each test waits for a condition with WebDriverWait (a bound, not a speed check). The
pages poll their live fragment every few seconds, so "without a reload" is checked by
a marker set on the page's window: it survives fragment swaps and dies with a reload.
"""

from __future__ import annotations

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import ADMIN_TOKEN, screenshot

pytestmark = pytest.mark.slow

WAIT_S = 20


def wait(driver, condition, what: str):
    # Fragments are swapped in whole: an element read a moment ago may be gone.
    ignored = (StaleElementReferenceException, NoSuchElementException)
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=ignored).until(
        lambda d: condition(d), message=what
    )


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def console_errors(driver) -> list[dict]:
    """Everything the page logged as an error since the last call (CSP violations too)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def register(orchestrator, name: str, **body) -> str:
    response = orchestrator.api.post("/v1/workers/register", json={"name": name, **body})
    assert response.status_code == 201, response.text
    return response.json()["worker_id"]


def streams(orchestrator, *specs: dict) -> None:
    response = orchestrator.api.post("/v1/streams/bulk", json={"streams": list(specs)})
    assert response.status_code == 200, response.text


def mark_window(driver) -> None:
    driver.execute_script("window.__noReload = true")


def not_reloaded(driver) -> bool:
    return driver.execute_script("return window.__noReload === true")


def polled(driver) -> None:
    """Wait until the page's live fragment was fetched and swapped in at least once more."""
    driver.execute_script(
        "window.__swaps = 0; document.body.addEventListener('htmx:afterSwap',"
        " () => { window.__swaps += 1; })"
    )
    wait(driver, lambda d: d.execute_script("return window.__swaps") > 0, "a live update")


def tab_to(driver, predicate, what: str, limit: int = 60):
    """Press Tab until the focused element satisfies `predicate`; return it."""
    for _ in range(limit):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        focused = driver.switch_to.active_element
        if predicate(focused):
            return focused
    raise AssertionError(f"Tab never reached {what}")


def test_overview_shows_the_numbers_of_the_status_call(orchestrator, browser):
    # Workers first, so that placement is final at once: they never heartbeat, so a
    # rebalancing move would never finish.
    register(orchestrator, "fp-a", capacity=20, labels={"region": "us"})
    register(orchestrator, "fp-b", capacity=20, labels={"region": "us"})
    streams(
        orchestrator,
        *({"key": f"radio:{i:03d}", "url": f"http://radio.example/{i}.mp3"} for i in range(30)),
        {
            "key": "radio:eu-only",
            "url": "http://radio.example/eu.mp3",
            "requires": {"region": "eu"},
        },
        {"key": "radio:off", "url": "http://radio.example/off.mp3", "enabled": False},
    )

    def status() -> dict:
        return orchestrator.api.get("/v1/status").json()

    wait(browser, lambda d: status()["streams"]["assigned"] == 30, "30 streams placed")
    browser.get(f"{orchestrator.url}/ui")
    now = status()
    wait(browser, lambda d: text(d, "streams-assigned") == "30", "the page shows 30 assigned")
    for element_id, value in (
        ("streams-assigned", now["streams"]["assigned"]),
        ("streams-moving", now["streams"]["moving"]),
        ("streams-unassigned", now["streams"]["unassigned"]),
        ("streams-disabled", now["streams"]["disabled"]),
        ("streams-enabled", now["streams"]["enabled"]),
        ("workers-active", now["workers"]["active"]),
        ("workers-draining", now["workers"]["draining"]),
        ("workers-expired", now["workers"]["expired"]),
        ("load-percent", f"{now['load_percent']} %"),
        ("balance-max", now["balance"]["max_utilisation"]),
        ("balance-mean", now["balance"]["mean_utilisation"]),
    ):
        assert text(browser, element_id) == str(value), element_id
    assert "ready" in text(browser, "health-postgresql")
    assert "ready" in text(browser, "health-redis")
    assert browser.find_element(By.ID, "open-warning").is_displayed()
    wait(browser, lambda d: "grants 30" in text(d, "activity"), "the chart of the hour")
    screenshot(browser, "overview")
    assert console_errors(browser) == []


def test_workers_registered_through_the_api_appear_without_a_reload(orchestrator, browser):
    browser.get(f"{orchestrator.url}/ui/workers?name=live-")
    mark_window(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "tr[data-worker]") == []
    for name in ("live-1", "live-2", "live-3"):
        register(orchestrator, name, capacity=10, labels={"zone": name})

    def rows(d) -> list[str]:
        return [
            r.get_attribute("data-worker")
            for r in d.find_elements(By.CSS_SELECTOR, "tr[data-worker]")
        ]

    wait(browser, lambda d: rows(d) == ["live-1", "live-2", "live-3"], "three new rows")
    assert not_reloaded(browser)
    assert console_errors(browser) == []


def test_drain_a_worker_from_the_dashboard(orchestrator, browser):
    worker_id = register(orchestrator, "drain-me", capacity=5)
    browser.get(f"{orchestrator.url}/ui/workers?name=drain-me")
    # The list may be up to one poll old (it is shared between open pages for 2 s).
    wait(browser, lambda d: d.find_element(By.LINK_TEXT, "drain-me"), "the new worker").click()
    wait(browser, lambda d: "drain-me" in d.find_element(By.ID, "worker-name").text, "its page")
    browser.find_element(By.ID, "drain").click()
    wait(browser, lambda d: "draining" in text(d, "worker-status"), "status draining")
    assert "Drain requested" in browser.page_source
    listed = orchestrator.api.get("/v1/workers").json()["items"]
    assert {w["worker_id"]: w["status"] for w in listed}[worker_id] == "draining"
    # Its events show the drain, live.
    wait(browser, lambda d: "drain_started" in text(d, "live"), "the drain_started event")
    screenshot(browser, "worker")
    assert console_errors(browser) == []


def test_find_a_stream_by_key_and_read_its_explanation(orchestrator, browser):
    streams(
        orchestrator,
        {"key": "camera:lobby-eu", "url": "rtsp://cam.example/1", "requires": {"region": "eu"}},
    )
    browser.get(f"{orchestrator.url}/ui/streams")
    search = browser.find_element(By.ID, "q")
    search.send_keys("lobby-eu", Keys.ENTER)
    wait(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-stream="camera:lobby-eu"]'),
        "the row",
    )
    browser.find_element(By.LINK_TEXT, "camera:lobby-eu").click()
    wait(browser, lambda d: "unplaced" in text(d, "explanation"), "the explanation")
    explanation = text(browser, "explanation")
    assert "region=eu" in explanation, explanation
    assert text(browser, "stream-owner") == "none"
    screenshot(browser, "stream")
    assert console_errors(browser) == []


def test_no_console_errors_on_any_page(orchestrator, browser):
    worker_id = register(orchestrator, "quiet-1", capacity=4)
    streams(orchestrator, {"key": "quiet:1", "url": "http://x.example/1"})
    pages = [
        "/ui",
        "/ui/workers",
        f"/ui/workers/{worker_id}",
        "/ui/streams",
        "/ui/streams?state=unassigned",
        "/ui/stream?key=quiet:1",
        "/ui/stream?key=quiet:1&confirm=delete",
        "/ui/events",
        "/ui/events?kind=worker_joined",
        f"/ui/events?worker={worker_id}",
    ]
    console_errors(browser)  # start clean
    for path in pages:
        browser.get(orchestrator.url + path)
        if browser.find_elements(By.CSS_SELECTOR, "[hx-trigger]"):
            polled(browser)  # the live update ran too
        assert console_errors(browser) == [], path


def test_keyboard_navigation(orchestrator, browser):
    streams(orchestrator, {"key": "keys:only", "url": "http://x.example/k"})
    browser.get(f"{orchestrator.url}/ui")
    # The first Tab reaches the skip link; Enter moves focus to the content.
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    skip = browser.switch_to.active_element
    assert skip.text == "Skip to content"
    skip.send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "main"
    # Through the navigation to the streams page, its search, a result and the stream.
    browser.get(f"{orchestrator.url}/ui")
    link = tab_to(browser, lambda e: e.text == "Streams", "the Streams link")
    link.send_keys(Keys.ENTER)
    wait(browser, lambda d: d.current_url.endswith("/ui/streams"), "the streams page")
    field = tab_to(browser, lambda e: e.get_attribute("id") == "q", "the search field")
    field.send_keys("keys:only", Keys.ENTER)
    wait(browser, lambda d: "q=keys" in d.current_url, "the search results")
    result = tab_to(browser, lambda e: e.text == "keys:only" and e.tag_name == "a", "the result")
    result.send_keys(Keys.ENTER)
    wait(browser, lambda d: text(d, "stream-key") == "keys:only", "the stream page")
    button = tab_to(browser, lambda e: e.get_attribute("id") == "disable", "the Disable button")
    button.send_keys(Keys.ENTER)
    wait(browser, lambda d: "disabled" in text(d, "stream-state"), "the stream disabled")
    assert orchestrator.api.get("/v1/streams/keys:only").json()["enabled"] is False
    assert console_errors(browser) == []


def test_sign_in_with_the_admin_token(orchestrator_factory, browser):
    guarded = orchestrator_factory(STREAMORCH_ADMIN_TOKEN=ADMIN_TOKEN)
    browser.get(f"{guarded.url}/ui/workers")
    wait(browser, lambda d: "/ui/login" in d.current_url, "the sign-in page")
    assert browser.find_elements(By.ID, "open-warning") == []
    field = browser.find_element(By.ID, "token")
    field.send_keys("not-the-token", Keys.ENTER)
    wait(browser, lambda d: d.find_elements(By.ID, "login-error"), "a refusal")
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN, Keys.ENTER)
    wait(browser, lambda d: d.current_url.endswith("/ui/workers"), "back to the workers page")
    assert ADMIN_TOKEN not in browser.current_url
    session = {c["name"]: c for c in browser.get_cookies()}["streamorch_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert "expiry" not in session  # a session cookie: gone when the browser closes
    assert ADMIN_TOKEN not in session["value"]
    polled(browser)  # live updates work with the session
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait(browser, lambda d: "/ui/login" in d.current_url, "signed out")
    browser.get(f"{guarded.url}/ui")
    wait(browser, lambda d: "/ui/login" in d.current_url, "the dashboard asks again")
    # The refused attempt is a 401 the browser reports; nothing else may be logged.
    errors = [e for e in console_errors(browser) if "status of 401" not in e["message"]]
    assert errors == []
