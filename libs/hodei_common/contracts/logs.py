"""A job's log on ``job.<id>.logs``: batches of lines, then one end-of-log marker.

Lines are numbered from 1 per attempt; a batch's ``Nats-Msg-Id`` is ``job:attempt:first_seq``
so a retried publish is dropped by JetStream. The last message of every job's log is a
:class:`LogEnd` with the final state and exit code (``Nats-Msg-Id`` ``job:end``).
"""

from __future__ import annotations

import enum
from typing import Annotated
from uuid import UUID

import msgspec

from hodei_common.contracts.jobs import JobState


class LogStream(enum.StrEnum):
    STDOUT = "out"
    STDERR = "err"


class LogLine(msgspec.Struct, frozen=True, array_like=True):
    """One line (without its newline): sequence number, stream, unix time, text."""

    seq: int
    stream: LogStream
    ts: float
    text: str


class LogBatch(msgspec.Struct, frozen=True, kw_only=True, tag="batch"):
    """Consecutive lines of one attempt."""

    job_id: UUID
    attempt: int
    lines: list[LogLine]


class LogEnd(msgspec.Struct, frozen=True, kw_only=True, tag="end"):
    """Nothing follows: the job ended in ``state`` (with ``exit_code`` when it ran).

    ``lines``: how many lines ``attempt`` logged, when known, so that a reader can tell it
    got every one.
    """

    job_id: UUID
    attempt: int
    state: JobState
    exit_code: int | None = None
    error: str | None = None
    lines: int | None = None


LogMessage = Annotated[LogBatch | LogEnd, msgspec.Meta(title="LogMessage")]
