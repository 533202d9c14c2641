"""Printing a job's log: each stream to its own file, byte for byte, filtered as asked.

stdout lines go to stdout and stderr lines to stderr, with their own terminators (a ``\\r``
progress bar redraws in place; a piece of an overlong line continues on the same line) and
their exact bytes (output that is not UTF-8 is not altered). The platform's own notices (a
truncation) go to stderr as ``hodei: ...`` whatever ``--stream`` says. A status line on the
terminal (why the job waits) is erased before anything is printed.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from hodei_cli.statusline import StatusLine
from hodei_common.contracts.logs import NEWLINE, LogBatch, LogLine, LogStream

NOTICE_PREFIX = b"hodei: "


@dataclass(frozen=True)
class Since:
    """``--since``: after line ``seq`` (of ``attempt``, or of every attempt), or from ``ts``."""

    seq: int | None = None
    attempt: int | None = None
    ts: float | None = None

    def keeps(self, attempt: int, line: LogLine) -> bool:
        if self.ts is not None:
            return line.ts >= self.ts
        if self.seq is None:
            return True
        if self.attempt is None or attempt == self.attempt:
            return line.seq > self.seq
        return attempt > self.attempt


@dataclass(frozen=True)
class LogFilter:
    since: Since | None = None
    stream: LogStream | None = None  # None: both

    def keeps(self, attempt: int, line: LogLine) -> bool:
        if line.stream is LogStream.SYSTEM:
            return True  # a notice is never filtered away
        if self.stream is not None and line.stream is not self.stream:
            return False
        return self.since is None or self.since.keeps(attempt, line)


def timestamp(ts: float) -> bytes:
    """RFC 3339 in UTC with milliseconds, as ``--timestamps`` prefixes lines."""
    when = datetime.fromtimestamp(ts, UTC)
    return (when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z ").encode()


class LogPrinter:
    """Writes kept lines to stdout/stderr; with ``tail``, holds the last N until released."""

    def __init__(
        self,
        keep: LogFilter | None = None,
        *,
        timestamps: bool = False,
        tail: int | None = None,
        out: BinaryIO | None = None,
        err: BinaryIO | None = None,
    ) -> None:
        self._keep = keep or LogFilter()
        self._timestamps = timestamps
        self._out = out or sys.stdout.buffer
        self._err = err or sys.stderr.buffer
        self._tail: deque[tuple[LogStream, float, bytes]] | None = (
            deque(maxlen=tail) if tail is not None else None)
        # Whether the next bytes of a stream start a line (a timestamp goes there only).
        self._line_start = {LogStream.STDOUT: True, LogStream.STDERR: True}
        self.lines = 0
        # Why the job waits, on a terminal; erased for good before the first thing printed.
        self.status: StatusLine | None = None

    def end_status(self) -> None:
        """Erase the status line, if there is one, for good."""
        if self.status is not None:
            self.status.close()

    def batch(self, batch: LogBatch) -> None:
        """Print (or hold, for the tail) the batch's kept lines, in order."""
        keep = self._keep.keeps
        lines = [(line.stream, line.ts, batch.data_of(line)) for line in batch.lines
                 if keep(batch.attempt, line)]
        if self._tail is not None:
            self._tail.extend(lines)
            return
        self._write(lines)

    def release_tail(self) -> None:
        """Print the held tail; from now on lines are printed as they come."""
        if self._tail is not None:
            held, self._tail = list(self._tail), None
            self._write(held)

    def _write(self, lines: list[tuple[LogStream, float, bytes]]) -> None:
        if lines:
            self.end_status()
        # Consecutive lines of one file in one write: stdout and stderr keep their interleaving.
        run: list[bytes] = []
        run_stream: LogStream | None = None
        for stream, ts, data in lines:
            if stream is LogStream.SYSTEM:
                data = NOTICE_PREFIX + data
                stream = LogStream.STDERR
            elif self._timestamps:
                if self._line_start[stream]:
                    data = timestamp(ts) + data
                self._line_start[stream] = data.endswith((b"\n", b"\r"))
            if stream is not run_stream and run:
                self._file(run_stream).write(b"".join(run))
                run = []
            run_stream = stream
            run.append(data)
        if run:
            self._file(run_stream).write(b"".join(run))
        self.lines += len(lines)
        self._out.flush()
        self._err.flush()

    def _file(self, stream: LogStream | None) -> BinaryIO:
        return self._err if stream is LogStream.STDERR else self._out

    def note(self, text: str) -> None:
        """One line of the CLI's own on stderr."""
        self.end_status()
        self._err.write(text.encode() + NEWLINE.encode())
        self._err.flush()
