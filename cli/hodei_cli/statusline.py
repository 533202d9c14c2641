"""The line ``hodei job run`` and ``hodei job logs --follow`` keep on a terminal while a job
waits: why it has not started yet (jobs ahead of it, its worker's pod Pending), redrawn in
place and erased before the job's first output, the way ``docker run`` shows a pull.

Only ever on a terminal's stderr: scripts reading stderr see nothing of it, and it costs
them no request.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import BinaryIO
from uuid import UUID

from nats.errors import Error as NatsError

from hodei_common.client import ApiClient
from hodei_common.contracts.api import JobExplanation
from hodei_common.contracts.jobs import JobState
from hodei_common.errors import HodeiError

POLL_INTERVAL_S = 0.5
ERASE = b"\r\x1b[K"
# "worker <uuid>" reads as "worker <its first 8 digits>…": the line has a terminal's width.
_WORKER_ID = re.compile(r"\bworker ([0-9a-f]{8})(-[0-9a-f]{4}){3}-[0-9a-f]{12}\b")


def fit(text: str, columns: int) -> str:
    """``text`` as one printable line shorter than ``columns`` (a full line would wrap on
    some terminals, and the next redraw would then start a line too low)."""
    line = "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
    room = max(columns - 1, 10)
    return line if len(line) <= room else line[: room - 1] + "…"


def describe(found: JobExplanation) -> str | None:
    """What the line says of a job that waits; None once it runs or ended."""
    state = found.job.state
    if state is JobState.RUNNING or state.terminal:
        return None
    waiting_for = _WORKER_ID.sub(r"worker \1…", found.waiting_for)
    return f"{state.value.lower()}: waiting for {waiting_for}"


class StatusLine:
    """One line on a terminal, redrawn in place (``\\r``, the text, clear to its end) until
    it is closed: then erased, for good."""

    def __init__(self, err: BinaryIO, fd: int, encoding: str = "utf-8") -> None:
        self._err = err
        self._fd = fd
        self._encoding = encoding
        self._shown = False
        self.closed = False

    @classmethod
    def on_stderr(cls) -> StatusLine:
        return cls(sys.stderr.buffer, sys.stderr.fileno(), sys.stderr.encoding or "utf-8")

    def show(self, text: str) -> None:
        """Draw ``text`` over what the line said; nothing once closed."""
        if self.closed:
            return
        line = fit(text, self._columns()).encode(self._encoding, errors="replace")
        self._err.write(b"\r" + line + b"\x1b[K")
        self._err.flush()
        self._shown = True

    def close(self) -> None:
        """Erase the line, if it is shown, and never draw it again."""
        self.closed = True
        if self._shown:
            self._shown = False
            self._err.write(ERASE)
            self._err.flush()

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self._fd).columns
        except OSError:
            columns = 0
        return columns or shutil.get_terminal_size().columns


async def keep_up(api: ApiClient, job_id: UUID, line: StatusLine,
                  interval_s: float = POLL_INTERVAL_S) -> None:
    """Redraw ``line`` from the job's explanation every ``interval_s`` until the job runs or
    ends, or the line is closed (its first output came); then erase it. The first look comes
    after one interval, so a job that starts at once never shows a line."""
    try:
        while not line.closed:
            await asyncio.sleep(interval_s)
            try:
                found = await api.explain(job_id)
            except (HodeiError, NatsError):
                continue  # only a hint: the job's output is what matters; look again
            text = describe(found)
            if text is None:
                return
            line.show(text)
    finally:
        line.close()


@asynccontextmanager
async def while_waiting(api: ApiClient, job_id: UUID, state: JobState,
                        line: StatusLine | None) -> AsyncIterator[None]:
    """Keep ``line`` up beside the work inside (None, or a job already running or ended:
    nothing is done); it is erased when that work ends, however it ends."""
    if line is None or state is JobState.RUNNING or state.terminal:
        yield
        return
    task = asyncio.create_task(keep_up(api, job_id, line))
    try:
        yield
    finally:
        line.close()
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            task.result()  # a bug in the line is not hidden
