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


def test_records_logged_during_a_request_carry_its_id(restore_logging):
    from streamorch import logs

    out = io.StringIO()
    configure_logging("INFO", "structured", stream=out)
    log = logging.getLogger("streamorch.test")
    token = logs.request_id.set("req-1")
    try:
        log.info("inside", extra={"action": "a"})
        log.info("explicit", extra={"action": "b", "request_id": "given"})
    finally:
        logs.request_id.reset(token)
    log.info("outside", extra={"action": "c"})
    inside, explicit, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["request_id"] == "req-1"
    assert explicit["request_id"] == "given"  # what the caller said wins
    assert "request_id" not in outside


def test_console_lines_show_the_request_id(restore_logging):
    from streamorch import logs

    out = io.StringIO()
    configure_logging("INFO", "console", stream=out)
    token = logs.request_id.set("req-2")
    try:
        logging.getLogger("x").warning("slow")
    finally:
        logs.request_id.reset(token)
    assert "request_id=req-2" in out.getvalue()
