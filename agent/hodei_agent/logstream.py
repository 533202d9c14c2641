"""A job's output as numbered lines, published in batches on the job's log subject of this
worker (``logs.<namespace>.<job>.<worker>``).

Throughput and latency both: a batch goes out when it is full (lines or bytes) or a short
linger after its first line. Back-pressure: at most ``max_in_flight`` batches are published
but unacknowledged and as many more cut and waiting; past that, :meth:`LogPublisher.write`
waits, so a flood of output slows the job's reader (and, through the pipe, the job) instead
of growing memory.

Batches go on the wire in sequence order. Should a publish fail and be retried while later
batches got through, the stream holds them out of order: readers order lines by ``seq``.

A cap on the bytes of one job's output (``max_total_bytes``) is never a silent stop: the line
that would pass it is replaced by a notice on the ``sys`` stream, the rest of the output is
read and dropped (so the job is never blocked on its pipe), and closing the log says how much
was dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from uuid import UUID

import msgspec
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from hodei_agent.reporting import publish_acked
from hodei_common import tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.logs import NEWLINE, LogBatch, LogLine, LogStream

READ_CHUNK = 64 * 1024
LINE_OVERHEAD = 32  # JSON framing of one line in a batch, roughly


class LogPublisher:
    """Numbers lines 1, 2, 3... across both streams and publishes them in order."""

    def __init__(
        self,
        js: JetStreamContext,
        job_id: UUID,
        attempt: int,
        *,
        namespace: str,
        worker_id: UUID,
        max_lines: int,
        max_bytes: int,
        linger_s: float,
        max_in_flight: int,
        publish_attempts: int,
        publish_timeout_s: float,
        max_total_bytes: int | None = None,
    ) -> None:
        self._js = js
        self._job_id = job_id
        self._attempt = attempt
        self._worker_id = worker_id
        self._subject = subjects.job_logs(namespace, job_id, worker_id)
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._linger_s = linger_s
        self._max_in_flight = max_in_flight
        self._publish_attempts = publish_attempts
        self._publish_timeout_s = publish_timeout_s
        self._max_total_bytes = max_total_bytes
        self._total_bytes = 0
        self.dropped_bytes = 0
        self.dropped_lines = 0
        self._lines: list[LogLine] = []
        self._ends: dict[int, str] = {}
        self._raw: dict[int, bytes] = {}
        self._bytes = 0
        self._first_at = 0.0
        # Cut batches wait here for a publish slot; writers wait while it is full.
        self._ready: deque[LogBatch] = deque()
        self._in_flight: deque[asyncio.Task[None]] = deque()
        self._wake = asyncio.Event()  # for the sender: a line or a batch is there
        self._room = asyncio.Event()  # for writers: the sender took a batch
        self._closing = False
        self._count = 0
        self._sender: asyncio.Task[None] | None = None

    @property
    def count(self) -> int:
        """Lines written so far (the last sequence number)."""
        return self._count

    def start(self) -> None:
        """Start the sender; call from inside the job's trace so publishes carry it."""
        self._sender = asyncio.create_task(self._send_loop(), name=f"logs {self._job_id}")

    @property
    def truncated(self) -> bool:
        return self.dropped_bytes > 0 or self.dropped_lines > 0

    async def write(
        self, stream: LogStream, text: str, end: str = NEWLINE, raw: bytes | None = None,
        size: int | None = None,
    ) -> None:
        """Add one line (``size``: its bytes in the output, when known); waits while too many
        batches are unacknowledged."""
        if self._max_total_bytes is not None:
            size = len(text) + len(end) if size is None else size
            if self.truncated or self._total_bytes + size > self._max_total_bytes:
                await self._drop(size)
                return
            self._total_bytes += size
        self._add(stream, text, end, raw)
        await self._wait_for_room()

    async def _drop(self, size: int) -> None:
        if not self.truncated:
            self._add(LogStream.SYSTEM, f"output truncated: this job's log reached its cap of "
                      f"{self._max_total_bytes} bytes; the rest of its output is dropped")
        self.dropped_bytes += size
        self.dropped_lines += 1
        await self._wait_for_room()

    def _add(self, stream: LogStream, text: str, end: str = NEWLINE,
             raw: bytes | None = None) -> None:
        self._count += 1
        self._lines.append(LogLine(self._count, stream, time.time(), text))
        if end != NEWLINE:
            self._ends[self._count] = end
        if raw is not None:
            self._raw[self._count] = raw
        self._bytes += len(text) + LINE_OVERHEAD
        if len(self._lines) == 1:
            self._first_at = time.monotonic()
            self._wake.set()
        if len(self._lines) >= self._max_lines or self._bytes >= self._max_bytes:
            self._cut()

    async def _wait_for_room(self) -> None:
        while len(self._ready) >= self._max_in_flight and not self._sender_done():
            self._room.clear()
            await self._room.wait()
        if self._sender_done():
            await self._raise_sender_error()

    async def close(self) -> int:
        """Publish what is buffered and wait until every batch is acknowledged.

        Returns the number of lines; raises PublishError when a batch could not be stored.
        """
        if self.truncated:
            self._add(LogStream.SYSTEM, f"output truncated: {self.dropped_bytes} bytes in "
                      f"{self.dropped_lines} lines over the cap were dropped")
        self._closing = True
        self._wake.set()
        if self._sender is not None:
            await self._sender
        return self._count

    async def abort(self) -> None:
        """Stop publishing at once (the agent is failing anyway)."""
        if self._sender is None:
            return
        self._sender.cancel()  # it cancels the publishes in flight on its way out
        await asyncio.wait({self._sender})
        if not self._sender.cancelled():
            self._sender.exception()  # seen: the FINISHED report names the failure

    def _sender_done(self) -> bool:
        return self._sender is not None and self._sender.done()

    async def _raise_sender_error(self) -> None:
        assert self._sender is not None
        await self._sender  # re-raises the sender's PublishError
        raise RuntimeError("the log sender stopped before the job's output ended")

    def _cut(self) -> None:
        if self._lines:
            self._ready.append(LogBatch(job_id=self._job_id, attempt=self._attempt,
                                        lines=self._lines, ends=self._ends, raw=self._raw))
            self._lines = []
            self._ends = {}
            self._raw = {}
            self._bytes = 0
            self._wake.set()

    async def _wait(self, timeout_s: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)

    async def _send_loop(self) -> None:
        try:
            while True:
                self._wake.clear()
                if not self._ready and self._lines:
                    linger_left = self._first_at + self._linger_s - time.monotonic()
                    if linger_left > 0 and not self._closing:
                        await self._wait(linger_left)
                        continue
                    self._cut()
                if not self._ready:
                    if self._closing:
                        break
                    await self._wait(None)
                    continue
                while len(self._in_flight) >= self._max_in_flight:
                    await self._in_flight.popleft()
                # Tasks start in creation order, so the batches go on the wire in order.
                batch = self._ready.popleft()
                self._in_flight.append(asyncio.create_task(self._publish(batch)))
                self._room.set()
            while self._in_flight:
                await self._in_flight.popleft()
        finally:
            self._room.set()  # a writer waiting for room must see the sender has ended
            for task in self._in_flight:
                if task.done() and not task.cancelled():
                    task.exception()  # already reported through the first failure
                task.cancel()

    async def _publish(self, batch: LogBatch) -> None:
        with tracing.tracer().start_as_current_span(
                "agent log batch", kind=SpanKind.PRODUCER,
                attributes={"hodei.log.first_seq": batch.lines[0].seq,
                            "hodei.log.lines": len(batch.lines)}):
            await publish_acked(
                self._js,
                self._subject,
                msgspec.json.encode(batch),
                # The writer is part of the id: no other worker can pre-empt it to have a
                # batch of this one's dropped as a duplicate.
                subjects.msg_id(self._job_id, self._attempt, batch.lines[0].seq,
                                self._worker_id),
                attempts=self._publish_attempts,
                timeout_s=self._publish_timeout_s,
            )


def _utf8_cut(data: bytes | bytearray, limit: int) -> int:
    """Largest cut point <= ``limit`` that does not split a UTF-8 character."""
    cut = limit
    while cut > limit - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else limit


async def _write(logs: LogPublisher, stream: LogStream, body: bytes, end: str) -> None:
    try:
        await logs.write(stream, body.decode(), end, size=len(body) + len(end))
    except UnicodeDecodeError:  # kept exactly; the text is for eyes only
        await logs.write(stream, body.decode(errors="replace"), end, bytes(body),
                         size=len(body) + len(end))


async def pump_lines(
    reader: asyncio.StreamReader,
    stream: LogStream,
    logs: LogPublisher,
    max_line_bytes: int,
) -> None:
    """Read ``reader`` to EOF and write each line (a longer one in pieces) to ``logs``.

    A line ends at ``\n``, ``\r\n`` or a lone ``\r`` (a progress bar redrawing itself shows
    live); a piece of a longer line, and the last bytes without terminator, end with nothing.
    """
    pending = b""
    while True:
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            break
        pending += chunk
        pieces = pending.splitlines(keepends=True)
        last = pieces[-1]
        # An unterminated tail waits for more; so does a final "\r": "\n" may follow it.
        keep = not last.endswith(b"\n")
        if keep:
            pieces.pop()
        for piece in pieces:
            await _write_line(logs, stream, piece, max_line_bytes)
        pending = last if keep else b""
        while len(pending) > max_line_bytes:
            cut = _utf8_cut(pending, max_line_bytes)
            await _write(logs, stream, pending[:cut], "")
            pending = pending[cut:]
    if pending:  # a last line without its newline still counts
        await _write_line(logs, stream, pending, max_line_bytes)


async def _write_line(logs: LogPublisher, stream: LogStream, piece: bytes,
                      max_line_bytes: int) -> None:
    """One terminated line (or the unterminated last one), in pieces if it is too long."""
    if piece.endswith(b"\r\n"):
        body, end = piece[:-2], "\r\n"
    elif piece.endswith((b"\n", b"\r")):
        body, end = piece[:-1], piece[-1:].decode()
    else:
        body, end = piece, ""
    while len(body) > max_line_bytes:
        cut = _utf8_cut(body, max_line_bytes)
        await _write(logs, stream, body[:cut], "")
        body = body[cut:]
    await _write(logs, stream, body, end)
