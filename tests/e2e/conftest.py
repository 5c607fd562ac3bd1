"""Fixtures for end-to-end tests: the start script against a throw-away data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Launcher


@pytest.fixture
def launcher(data_dir: Path) -> Iterator[Launcher]:
    """Starts `start-orchestrator.sh` on this test's data directory; cleans up after it."""
    launcher = Launcher(data_dir)
    try:
        yield launcher
    finally:
        launcher.close()
