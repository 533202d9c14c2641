"""A job's log on ``logs.<namespace>.<job>.<writer>``: batches of lines, then an end marker.

Each attempt's agent writes its lines under its own worker id; lines are numbered from 1 per
attempt, and a batch's ``Nats-Msg-Id`` is ``job:attempt:first_seq:worker`` so a retried publish
is dropped by JetStream. The platform writes, under ``hodei``, a :class:`LogStart` naming the
worker of each attempt as it assigns it (readers take an attempt's lines from that worker
alone), and last of all a :class:`LogEnd` with the final state and exit code.

A line is the job's output up to and including its terminator: ``\\n`` (the usual case, not
repeated on the wire), ``\\r`` (a progress bar redrawing its line), ``\\r\\n``, or nothing (the
last bytes of the output, or a piece of a line longer than the agent's line limit). Output
that is not valid UTF-8 keeps its exact bytes too. Both are sparse fields of the batch, so the
common line costs nothing extra.
"""

from __future__ import annotations

import enum
from typing import Annotated
from uuid import UUID

import msgspec

from hodei_common.contracts.jobs import JobState

NEWLINE = "\n"


class LogStream(enum.StrEnum):
    STDOUT = "out"
    STDERR = "err"
    # Written by the platform itself, not the job: a truncation notice.
    SYSTEM = "sys"


class LogLine(msgspec.Struct, frozen=True, array_like=True):
    """One line (without its terminator): sequence number, stream, unix time, text."""

    seq: int
    stream: LogStream
    ts: float
    text: str


class LogBatch(msgspec.Struct, frozen=True, kw_only=True, tag="batch", omit_defaults=True):
    """Consecutive lines of one attempt.

    ``ends``: the terminator of each line (by ``seq``) that does not end with ``\\n``.
    ``raw``: the exact bytes (without terminator) of each line that is not valid UTF-8; its
    ``text`` then shows them with U+FFFD in place of the bad bytes.
    """

    job_id: UUID
    attempt: int
    lines: list[LogLine]
    ends: dict[int, str] = msgspec.field(default_factory=dict)
    raw: dict[int, bytes] = msgspec.field(default_factory=dict)

    def end_of(self, line: LogLine) -> str:
        """The line's terminator."""
        return self.ends.get(line.seq, NEWLINE) if self.ends else NEWLINE

    def data_of(self, line: LogLine) -> bytes:
        """The line's exact bytes, terminator included."""
        raw = self.raw.get(line.seq) if self.raw else None
        body = raw if raw is not None else line.text.encode()
        return body + self.end_of(line).encode()

    def only(self, lines: list[LogLine]) -> LogBatch:
        """This batch with only ``lines`` (a subset of its own)."""
        if len(lines) == len(self.lines):
            return self
        keep = {line.seq for line in lines}
        return LogBatch(
            job_id=self.job_id, attempt=self.attempt, lines=lines,
            ends={s: e for s, e in self.ends.items() if s in keep},
            raw={s: r for s, r in self.raw.items() if s in keep},
        )


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


class LogStart(msgspec.Struct, frozen=True, kw_only=True, tag="start"):
    """The platform gave ``attempt`` to ``worker_id``: its lines are that worker's alone.

    Readers keep it to themselves: a log as read (and archived) is batches and the end.
    """

    job_id: UUID
    attempt: int
    worker_id: UUID


LogMessage = Annotated[LogBatch | LogEnd, msgspec.Meta(title="LogMessage")]
# How long the LOGS stream keeps log lines unless the platform setting says otherwise.
LOGS_MAX_AGE_S = 7 * 24 * 3600.0
# What the LOGS stream holds: a log's messages and the platform's attempt markers.
LogRecord = LogBatch | LogEnd | LogStart
