"""Log lines one grep can follow: each carries the ids of what it is about, from context.

Every process calls `configure_logging()` once at its start (the web app's factory and
gunicorn's logger class, the gateway's entry, Celery's `setup_logging` signal). It puts one
handler on the root logger, so every library's lines (Celery's, gunicorn's error log,
uvicorn's) go through it, and a filter on that handler copies the ids of the current context
onto each record: `request_id` (an API request, and every task it enqueued, carried as a
Celery message header), `task_id`, `job_id` and `event_id` (bound where a task loads its
event), `user_id` (a gateway socket). The ids live in a context variable: a gunicorn thread,
a Celery task and an asyncio task each see their own.

LOG_FORMAT=json writes one JSON object a line (time in UTC, level, logger, message, process
and pid, the ids, the record's `extra` fields, the exception); text, the default, appends
the ids to a readable line."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from settings import settings

# In the order a JSON line shows them.
CONTEXT_FIELDS = ("request_id", "task_id", "job_id", "event_id", "user_id")
# The Celery message header that carries the request id into the tasks a request enqueued.
REQUEST_ID_HEADER = "request_id"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

LogIds = Mapping[str, str | int]
_NO_IDS: LogIds = MappingProxyType({})
_ids: ContextVar[LogIds] = ContextVar("log_ids", default=_NO_IDS)

# What every LogRecord has; anything else on a record came from `extra=` (or the filter).
# uvicorn's `color_message` is its message again with terminal colours: left out.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",
}


def log_ids() -> LogIds:
    """The ids of the current context."""
    return _ids.get()


def _present(base: LogIds, ids: dict[str, str | int | None]) -> LogIds:
    return MappingProxyType({**base, **{k: v for k, v in ids.items() if v is not None}})


def open_context(**ids: str | int | None) -> Token[LogIds]:
    """Start a fresh context with these ids (a request, a task): nothing of the previous
    one is kept. Close it with `close_context` and the token."""
    return _ids.set(_present(_NO_IDS, ids))


def close_context(token: Token[LogIds]) -> None:
    _ids.reset(token)


def bind(**ids: str | int | None) -> None:
    """Add ids to the current context, until it closes."""
    _ids.set(_present(_ids.get(), ids))


def bind_job(job_id: int, event_id: int | None = None) -> None:
    """What the rest of the request or task is about: this job (and this event of it)."""
    bind(job_id=job_id, event_id=event_id)


@contextmanager
def bound(**ids: str | int | None) -> Iterator[None]:
    """These ids added for a block only (a gateway handler: many run on one thread)."""
    token = _ids.set(_present(_ids.get(), ids))
    try:
        yield
    finally:
        _ids.reset(token)


def task_headers() -> dict[str, str]:
    """The Celery message headers that carry this context into a task it enqueues."""
    request_id = _ids.get().get("request_id")
    return {REQUEST_ID_HEADER: str(request_id)} if request_id is not None else {}


class ContextFilter(logging.Filter):
    """Copies the current context's ids onto each record (an id the call passed in `extra`
    wins). On the handler, not a logger: a handler sees every propagated record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _ids.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line. Keys: time, level, logger, message, process, pid, the
    context ids present, the record's `extra` fields, and `exception` / `stack`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
            "pid": record.process,
        }
        fields = vars(record)
        line.update((name, fields[name]) for name in CONTEXT_FIELDS if name in fields)
        line.update(
            (name, value)
            for name, value in fields.items()
            if name not in _RECORD_ATTRIBUTES and name not in line
        )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message [job_id=42 request_id=…]`: the ids only where present."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = " ".join(
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if hasattr(record, name)
        )
        if not ids:
            return text
        first, newline, rest = text.partition("\n")  # after the message, before a traceback
        return f"{first} [{ids}]{newline}{rest}"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is at the time (as logging's last resort does)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def formatter() -> logging.Formatter:
    """The formatter LOG_FORMAT asks for."""
    return JsonFormatter() if settings.log_format == "json" else TextFormatter()


def log_handler() -> logging.Handler:
    """A stderr handler with the format LOG_FORMAT asks for and the context's ids."""
    handler = _StderrHandler()
    handler.setFormatter(formatter())
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(level: int | str = logging.INFO) -> None:
    """Send every logger's records to stderr in LOG_FORMAT, with the context's ids. Like
    `logging.basicConfig`, it leaves a root logger that has handlers alone: a process sets
    its logging up once (and under pytest, pytest's capture stays)."""
    root = logging.getLogger()
    if root.handlers:
        return
    root.addHandler(log_handler())
    root.setLevel(level)
    logging.captureWarnings(True)  # a warning is a log line too (logger `py.warnings`)
