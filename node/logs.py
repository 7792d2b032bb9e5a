"""Structured logging: every line of a job carries its `video_id`; JSON with USE_JSON_LOGGING.

Stack traces are printed only at DEBUG (`exc_info=debug_enabled()`); at INFO an error is one line
with its code, which is what operators grep for.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from typing import Iterator

_video_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("video_id", default=None)
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


@contextlib.contextmanager
def job_context(video_id: str) -> Iterator[None]:
    token = _video_id.set(video_id)
    try:
        yield
    finally:
        _video_id.reset(token)


def debug_enabled() -> bool:
    return logging.getLogger("node").isEnabledFor(logging.DEBUG)


class _JobFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "video_id"):
            record.video_id = _video_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED and v is not None})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return f"{line} [video_id={record.video_id}]" if getattr(record, "video_id", None) else line


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Logs go to stderr, so `--json` output on stdout stays one clean JSON object."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_JobFilter())
    handler.setFormatter(JsonFormatter() if json_lines else
                         TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # third-party libraries stay quiet
    for name in ("node", "providers", "models"):
        logging.getLogger(name).setLevel(level.upper())
