"""Logging set-up shared by every Hodei process (light: no client libraries imported).

``HODEI_LOG_FORMAT=json`` makes every record one JSON object per line, so that a log
collector can join it to its trace: the current span's ``trace_id``/``span_id`` and the job
being handled (``job_id``) travel with each line. Both come from context variables, so a
record costs a lookup or two, not a call the handler has to make.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from hodei_common.errors import ConfigError

LOG_FORMAT_ENV = "HODEI_LOG_FORMAT"
TEXT, JSON = "text", "json"
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The service and the job a task works for. Tasks copy the context they are created in, so a
# service's loops and a handler's children log under the names set at their start; in the
# embedded platform each service's task sets its own.
SERVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar("hodei_service",
                                                                     default=None)
JOB_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("hodei_job_id",
                                                                    default=None)


def configure_logging(level: str = "INFO", *, service: str | None = None) -> None:
    """One line per record on stderr, the same format in every process: text, or JSON when
    ``HODEI_LOG_FORMAT=json``. ``service`` names the process's records where no task says
    otherwise (default: the program's name)."""
    chosen = os.environ.get(LOG_FORMAT_ENV, TEXT).strip().lower() or TEXT
    if chosen not in (TEXT, JSON):
        raise ConfigError(f"{LOG_FORMAT_ENV} must be {TEXT} or {JSON} "
                          f"(got {os.environ[LOG_FORMAT_ENV]!r})")
    handler = logging.StreamHandler(sys.stderr)
    if chosen == JSON:
        handler.setFormatter(JsonFormatter(service or _program()))
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


@contextlib.contextmanager
def job_context(job_id: UUID | str | None) -> Iterator[None]:
    """Records logged inside the block (and by tasks created in it) name ``job_id``."""
    token = JOB_ID.set(None if job_id is None else str(job_id))
    try:
        yield
    finally:
        JOB_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time (RFC 3339, UTC), level, service, logger, message,
    the current span's ids when it is valid, the job when known, and the exception's text.

    ``job_id`` comes from the record (``extra={"job_id": ...}``) or else from
    :func:`job_context`."""

    def __init__(self, service: str) -> None:
        super().__init__()
        # Imported here: a text-logging process need not load the tracing API for its logs.
        from opentelemetry import trace

        self._service = service
        self._current_span = trace.get_current_span

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "service": SERVICE.get() or self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = self._current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = f"{context.trace_id:032x}"
            entry["span_id"] = f"{context.span_id:016x}"
        job_id = getattr(record, "job_id", None) or JOB_ID.get()
        if job_id is not None:
            entry["job_id"] = str(job_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _program() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name or "hodei"
