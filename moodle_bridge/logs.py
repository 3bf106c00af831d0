"""The bridge's log lines: human text (default) or one JSON object per line.

JSON lines carry ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and the ids a log
aggregator joins on: ``job_id``, ``batch_id``, ``company_id``, ``report_id``, ``key_id`` and
``reason`` when the event has them. Ids come from ``extra={...}`` on the call or from
``log_context(...)`` around a piece of work; nothing else from a record is copied, so a message
body or a secret passed by mistake in another attribute never reaches the output.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

#: Record attributes copied into JSON lines (and appended to human lines) when present.
CONTEXT_FIELDS = ("job_id", "batch_id", "company_id", "report_id", "key_id", "reason", "status")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "mrco_log_context", default=None
)


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Ids added to every log line emitted inside the block (this thread / task only)."""
    merged = {**(_context.get() or {}), **{k: v for k, v in ids.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out = dict(_context.get() or {})
    for name in CONTEXT_FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            out[name] = value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=str)


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = _fields(record)
        if extra:
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test capture, a redirected stream)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._fixed = stream

    @property
    def stream(self) -> TextIO:
        return self._fixed or sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


_installed: list[logging.Handler] = []


def configure_logging(fmt: str = "human", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Install one root handler writing ``fmt`` lines to ``stream`` (stderr by default).

    Calling it again replaces the handler it installed before; handlers others installed
    (a test's log capture, an embedding application's) are left alone.
    """
    if fmt == "auto":
        fmt = "human" if (stream or sys.stderr).isatty() else "json"
    handler = _StderrHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    while _installed:
        root.removeHandler(_installed.pop())
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
