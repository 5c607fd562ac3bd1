"""A real orchestrator on a loopback port and a headless Debian Chromium driving it.

The server is the real app under uvicorn in a thread of the test process, on its own
database; the browser is /usr/bin/chromium through /usr/bin/chromedriver (Selenium).
Without them the tests skip, except under CI=true, where `.ci/run` installs them and a
missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from streamorch.api.app import create_app
from streamorch.config import load_settings
from tests.conftest import PostgresServer, _recreate, drop_database

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ADMIN_TOKEN = "browser-admin-token"
# Set to a directory (docs/images) to keep the screenshots the tests take.
SCREENSHOTS = os.environ.get("STREAMORCH_SCREENSHOTS")


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    reason = f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the browser tests; .ci/run installs them)")
    pytest.skip(reason)


@dataclass
class Orchestrator:
    url: str
    api: httpx.Client  # with the admin token when one is configured


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def orchestrator_factory(postgres_server: PostgresServer, template_database: str, redis_url: str):
    """Start orchestrators for this module; each stops (and drops its database) at its end."""
    started: list[tuple[uvicorn.Server, threading.Thread, httpx.Client, str, Path]] = []

    def start(**env: str) -> Orchestrator:
        name = f"b_{uuid.uuid4().hex[:12]}"
        _recreate(postgres_server, name, template=template_database)
        data = Path(tempfile.mkdtemp(prefix="streamorch-browser-"))
        settings = load_settings(
            {
                "STREAMORCH_DATA_DIR": str(data / "data"),
                "DATABASE_URL": postgres_server.url(name),
                "REDIS_URL": redis_url,
                # Workers registered by the tests never heartbeat: they must not expire.
                "LEASE_TTL": "600",
                "RECONCILE_INTERVAL": "0.2",
                "LOG_LEVEL": "WARNING",
                **env,
            }
        )
        port = _free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_config=None, loop="asyncio"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"orchestrator-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive(), "the orchestrator did not start"
            assert time.monotonic() < deadline, "the orchestrator did not start within 60 s"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        token = env.get("STREAMORCH_ADMIN_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        api = httpx.Client(base_url=url, headers=headers, timeout=30)
        started.append((server, thread, api, name, data))
        return Orchestrator(url, api)

    yield start
    for server, thread, api, name, data in started:
        api.close()
        server.should_exit = True
        thread.join(timeout=30)
        drop_database(postgres_server, name)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def orchestrator(orchestrator_factory) -> Orchestrator:
    _require_browser()
    return orchestrator_factory()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str) -> None:
    if SCREENSHOTS:
        target = Path(SCREENSHOTS)
        target.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(target / f"{name}.png"))
