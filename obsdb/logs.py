"""Log output: one line per event, as text (the default) or as JSON objects.

Every logger of the process (obsdb's, procrastinate's, the libraries') goes through one
handler on the root logger, so all of them share the format and the level. In JSON, each
line is an object with ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, then
whatever the event carries: the ``extra`` fields of the call (procrastinate gives
``action``, ``worker``, ``job``), the job being run (``job``, and its arguments such as
``frame_id`` at the top level), and ``exception`` with the traceback.

The job context comes from procrastinate's own "Starting job" event: it is logged in the
job's asyncio task, whose context the job's thread inherits, so every line logged while a
job runs names that job and its frame, with no change to the tasks themselves.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import PurePath
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}
# The fields of the line itself: an ``extra`` of the same name does not overwrite them.
_OWN_FIELDS = ("time", "level", "logger", "message", "exception", "stack")

# procrastinate's log context of the job running in this task or thread (None outside jobs).
_current_job: ContextVar[dict[str, Any] | None] = ContextVar("obsdb_current_job", default=None)


def current_job() -> dict[str, Any] | None:
    """The job being run where this is called (procrastinate's log context of it), if any."""
    return _current_job.get()


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}
        job = extra.get("job") if isinstance(extra.get("job"), dict) else current_job()
        if job is not None:
            line["job"] = job
            kwargs = job.get("task_kwargs")
            if isinstance(kwargs, dict):  # frame_id, field, filter_name: what the job is about
                for key, value in kwargs.items():
                    if key not in _OWN_FIELDS and key != "job":
                        line.setdefault(key, value)
        for key, value in extra.items():
            if key not in _OWN_FIELDS:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=_jsonable, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (click's test runner swaps it)."""

    obsdb_handler = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_WORKER_LOGGER = "procrastinate.worker"


class _JobContextFilter(logging.Filter):
    """Remembers the job procrastinate starts, for the lines logged while it runs.

    procrastinate's worker logger is kept at INFO even when the output shows warnings
    only, so that its "Starting job" event is seen; its records below the chosen level
    stop here. (Other loggers keep their own levels: ``obsdb watch`` shows its INFO lines.)
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "action", None) == "start_job" and isinstance(getattr(record, "job", None), dict):
            _current_job.set(record.job)
        if record.levelno >= self.level:
            return True
        return not (record.name == _WORKER_LOGGER or record.name.startswith(_WORKER_LOGGER + "."))


def configure_logging(level: int, log_format: str = "text") -> None:
    """Send every logger's records at ``level`` and above to stderr, one line per event.

    Does nothing if logging was already set up by someone else (a program embedding obsdb,
    pytest); called again, it changes the level and the format of its own handler.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "obsdb_handler", False)), None)
    if handler is None:
        if root.handlers:
            return
        handler = _StderrHandler()
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    for old in [f for f in handler.filters if isinstance(f, _JobContextFilter)]:
        handler.removeFilter(old)
    handler.addFilter(_JobContextFilter(level))
    root.setLevel(level)
    logging.getLogger(_WORKER_LOGGER).setLevel(min(level, logging.INFO))
