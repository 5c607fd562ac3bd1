"""Both log formats carry a UTC timestamp and the context given in `extra`."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from streamorch.logs import configure_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_structured_lines_are_json_with_context(restore_logging):
    out = io.StringIO()
    configure_logging("INFO", "structured", stream=out)
    logging.getLogger("streamorch.test").warning(
        "lease expired", extra={"action": "lease_expired", "worker": "w1", "fix": "check it"}
    )
    entry = json.loads(out.getvalue())
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "streamorch.test"
    assert entry["message"] == "lease expired"
    assert entry["action"] == "lease_expired"
    assert entry["worker"] == "w1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["timestamp"])


def test_console_lines_show_fix_and_stack(restore_logging):
    out = io.StringIO()
    configure_logging("INFO", "console", stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed", extra={"phase": "migrate", "fix": "run it"})
    text = out.getvalue()
    assert re.match(r"\d{4}-\d\d-\d\dT\S+Z ERROR   x: failed  \[phase=migrate\]", text)
    assert "→ try: run it" in text
    assert "ValueError: boom" in text
