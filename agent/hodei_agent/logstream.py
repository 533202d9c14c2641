"""A job's output as numbered lines, published in batches on ``job.<id>.logs``.

Throughput and latency both: a batch goes out when it is full (lines or bytes) or a short
linger after its first line. Back-pressure: at most ``max_in_flight`` batches are published
but unacknowledged and as many more cut and waiting; past that, :meth:`LogPublisher.write`
waits, so a flood of output slows the job's reader (and, through the pipe, the job) instead
of growing memory.

Batches go on the wire in sequence order. Should a publish fail and be retried while later
batches got through, the stream holds them out of order: readers order lines by ``seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from uuid import UUID

import msgspec
from nats.js import JetStreamContext

from hodei_agent.reporting import publish_acked
from hodei_common.contracts import subjects
from hodei_common.contracts.logs import LogBatch, LogLine, LogStream

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
        max_lines: int,
        max_bytes: int,
        linger_s: float,
        max_in_flight: int,
        publish_attempts: int,
        publish_timeout_s: float,
    ) -> None:
        self._js = js
        self._job_id = job_id
        self._attempt = attempt
        self._subject = subjects.job_logs(job_id)
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._linger_s = linger_s
        self._max_in_flight = max_in_flight
        self._publish_attempts = publish_attempts
        self._publish_timeout_s = publish_timeout_s
        self._lines: list[LogLine] = []
        self._bytes = 0
        self._first_at = 0.0
        # Cut batches wait here for a publish slot; writers wait while it is full.
        self._ready: deque[list[LogLine]] = deque()
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

    async def write(self, stream: LogStream, text: str) -> None:
        """Add one line; waits while too many batches are unacknowledged."""
        self._count += 1
        self._lines.append(LogLine(self._count, stream, time.time(), text))
        self._bytes += len(text) + LINE_OVERHEAD
        if len(self._lines) == 1:
            self._first_at = time.monotonic()
            self._wake.set()
        if len(self._lines) >= self._max_lines or self._bytes >= self._max_bytes:
            self._cut()
        while len(self._ready) >= self._max_in_flight and not self._sender_done():
            self._room.clear()
            await self._room.wait()
        if self._sender_done():
            await self._raise_sender_error()

    async def close(self) -> int:
        """Publish what is buffered and wait until every batch is acknowledged.

        Returns the number of lines; raises PublishError when a batch could not be stored.
        """
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
            self._ready.append(self._lines)
            self._lines = []
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

    async def _publish(self, lines: list[LogLine]) -> None:
        batch = LogBatch(job_id=self._job_id, attempt=self._attempt, lines=lines)
        await publish_acked(
            self._js,
            self._subject,
            msgspec.json.encode(batch),
            subjects.msg_id(self._job_id, self._attempt, lines[0].seq),
            attempts=self._publish_attempts,
            timeout_s=self._publish_timeout_s,
        )


def _utf8_cut(data: bytes | bytearray, limit: int) -> int:
    """Largest cut point <= ``limit`` that does not split a UTF-8 character."""
    cut = limit
    while cut > limit - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else limit


async def pump_lines(
    reader: asyncio.StreamReader,
    stream: LogStream,
    logs: LogPublisher,
    max_line_bytes: int,
) -> None:
    """Read ``reader`` to EOF and write each line (a longer one in pieces) to ``logs``."""
    pending = bytearray()
    while True:
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            break
        pending += chunk
        start = 0
        while True:
            end = pending.find(b"\n", start)
            if end == -1 or end - start > max_line_bytes:
                if len(pending) - start <= max_line_bytes:
                    break
                end = start + _utf8_cut(pending[start:], max_line_bytes)
                await logs.write(stream, pending[start:end].decode("utf-8", errors="replace"))
                start = end
                continue
            await logs.write(stream, pending[start:end].decode("utf-8", errors="replace"))
            start = end + 1
        del pending[:start]
    if pending:  # a last line without its newline still counts
        await logs.write(stream, pending.decode("utf-8", errors="replace"))
