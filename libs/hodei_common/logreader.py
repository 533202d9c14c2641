"""Reading a job's log: everything so far, or everything until the end marker.

:func:`read_log` reads a finished job's archive when there is one, else the stream from the
job's first message, so a reader that attaches at any time gets every line once, in order,
then the end marker. :class:`LiveLog` follows a job it is about to submit (``hodei job run``)
without making a stream consumer, falling back to :func:`read_log` whenever it cannot prove it
saw every line.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from uuid import UUID

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from hodei_common import logarchive, messaging
from hodei_common.contracts import subjects
from hodei_common.contracts.logs import LogBatch, LogEnd, LogMessage, LogRecord, LogStart

# Out-of-order batches (a publish retried while later ones got through) are held back until
# the gap fills; past this many, the gap is taken as lines that are gone.
MAX_HELD_BATCHES = 64


class LogAssembler:
    """Puts a log's messages in reading order: each attempt's lines once, by line number, from
    the worker the platform gave the attempt to.

    Attempts follow one another as the stream has them; a batch of an attempt that arrives
    ahead of its turn waits until the lines before it came (or the log ends). A batch of an
    attempt older than one already seen is refused: a worker declared dead that kept writing
    for a moment before its stop order landed (the stream keeps those lines). A batch whose
    attempt the platform has not yet said whose it is waits for that word (the marker and the
    first lines travel apart); any other writer's lines, and an end not written by the
    platform, are no part of the log.
    """

    def __init__(self) -> None:
        self._next: dict[int, int] = {}  # attempt -> the line number expected next
        self._held: dict[int, list[LogBatch]] = {}
        self._attempt: int | None = None
        self._newest = 0
        self._owners: dict[int, str] = {}  # attempt -> the worker the platform gave it to
        self._unowned: list[tuple[str, LogBatch]] = []  # lines of attempts not yet given

    def add_record(self, record: LogRecord, writer: str) -> list[LogMessage]:
        """What can be given now that ``record`` came from ``writer`` (its subject's last
        token)."""
        if writer == subjects.PLATFORM_LOG_WRITER:
            if isinstance(record, LogStart):
                return self._owned(record.attempt, str(record.worker_id))
            return self.add(record) if isinstance(record, LogEnd) else []
        if not isinstance(record, LogBatch):
            return []  # only the platform starts or ends an attempt
        owner = self._owners.get(record.attempt)
        if owner is None:
            if len(self._unowned) < MAX_HELD_BATCHES:
                self._unowned.append((writer, record))
            return []
        return self.add(record) if writer == owner else []

    def _owned(self, attempt: int, worker: str) -> list[LogMessage]:
        if attempt in self._owners:
            return []  # said again (an assignment sent anew)
        self._owners[attempt] = worker
        waiting, self._unowned = self._unowned, []
        out: list[LogMessage] = []
        for writer, batch in waiting:
            if batch.attempt != attempt:
                self._unowned.append((writer, batch))
            elif writer == worker:
                out += self.add(batch)
        return out

    def add(self, message: LogMessage) -> list[LogMessage]:
        """What can be given now that ``message`` came, in order (its writer already known to
        be the right one)."""
        if isinstance(message, LogEnd):
            return [*self.flush(), message]
        if message.attempt < self._newest:
            return []  # a stale attempt's late lines
        self._newest = message.attempt
        out: list[LogMessage] = []
        attempt = message.attempt
        if self._attempt is not None and attempt != self._attempt:
            out += self._flush(self._attempt)
        self._attempt = attempt
        expected = self._next.get(attempt, 1)
        lines = [line for line in message.lines if line.seq >= expected]
        if not lines:
            return out  # published twice (a retried publish)
        batch = message.only(lines)
        if lines[0].seq == expected:
            out += self._give(batch)
            out += self._release(attempt)
            return out
        held = self._held.setdefault(attempt, [])
        held.append(batch)
        if len(held) > MAX_HELD_BATCHES:
            out += self._flush(attempt)
        return out

    def flush(self) -> list[LogMessage]:
        """Everything held, gaps and all (the log ended, or the reader stops here); lines
        of attempts nobody was given are dropped."""
        out: list[LogMessage] = []
        for attempt in list(self._held):
            out += self._flush(attempt)
        self._unowned.clear()
        return out

    def _give(self, batch: LogBatch) -> list[LogMessage]:
        self._next[batch.attempt] = batch.lines[-1].seq + 1
        return [batch]

    def _release(self, attempt: int) -> list[LogMessage]:
        out: list[LogMessage] = []
        held = self._held.get(attempt, [])
        progress = True
        while held and progress:
            progress = False
            for batch in sorted(held, key=lambda b: b.lines[0].seq):
                expected = self._next.get(attempt, 1)
                if batch.lines[0].seq > expected:
                    break
                held.remove(batch)
                progress = True
                lines = [line for line in batch.lines if line.seq >= expected]
                if lines:
                    out += self._give(batch.only(lines))
        return out

    def _flush(self, attempt: int) -> list[LogMessage]:
        out: list[LogMessage] = []
        for batch in sorted(self._held.pop(attempt, []), key=lambda b: b.lines[0].seq):
            lines = [line for line in batch.lines if line.seq >= self._next.get(attempt, 1)]
            if lines:
                out += self._give(batch.only(lines))
        return out


_RECORD = msgspec.json.Decoder(LogRecord)


def decode_record(data: bytes, job_id: UUID) -> LogRecord | None:
    """A message of the job's log, or None for one that is not (undecodable, or about
    another job): any worker may write under its own id, so nothing read is trusted."""
    try:
        record = _RECORD.decode(data)
    except msgspec.DecodeError:
        return None
    return record if record.job_id == job_id else None


async def _last_seq(js: JetStreamContext, namespace: str, job_id: UUID) -> int:
    """The stream sequence of the job's newest log message, 0 when it has none (a direct get
    with the subject in the request's own, which permissions can confine to a namespace)."""
    try:
        last = await js.get_last_msg(subjects.LOGS_STREAM,
                                     subjects.job_log_subjects(namespace, job_id), direct=True)
    except NotFoundError:
        return 0
    return int(last.seq or 0)


class LogReader:
    """One reading of a job's log, from its archive or its stream.

    ``caught_up`` turns true once every message that existed when reading began was given
    (``hodei job logs --tail N --follow`` prints its tail then).
    """

    def __init__(self, js: JetStreamContext, namespace: str, job_id: UUID) -> None:
        self._js = js
        self.namespace = namespace
        self.job_id = job_id
        self.caught_up = False
        self.from_archive = False

    async def messages(
        self, *, follow: bool, idle_timeout_s: float | None = None
    ) -> AsyncGenerator[LogMessage, None]:
        """Yield the job's log messages in order.

        Without ``follow`` it stops at the newest message that existed when called; with it,
        it stops after the end marker (or when nothing arrives for ``idle_timeout_s``).
        """
        archived = await logarchive.info(self._js, self.namespace, self.job_id)
        if archived is not None:
            self.from_archive = True
            async with contextlib.aclosing(logarchive.read(self._js, archived)) as archive:
                async for message in archive:
                    yield message
            self.caught_up = True
            return
        until = await _last_seq(self._js, self.namespace, self.job_id)
        if until == 0:
            self.caught_up = True
            if not follow:
                return
        assembler = LogAssembler()
        async with contextlib.aclosing(self._stream(idle_timeout_s)) as stream:
            async for message in self._assembled(stream, assembler, until, follow):
                yield message
                if isinstance(message, LogEnd):
                    return

    async def _assembled(
        self,
        stream: AsyncIterator[tuple[LogRecord | None, str, int]],
        assembler: LogAssembler,
        until: int,
        follow: bool,
    ) -> AsyncIterator[LogMessage]:
        async for record, writer, seq in stream:
            if seq >= until:
                self.caught_up = True
            given = [] if record is None else assembler.add_record(record, writer)
            if not follow and self.caught_up:
                given += assembler.flush()  # this reading ends here
            for each in given:
                yield each
                if isinstance(each, LogEnd):
                    return
            if not follow and self.caught_up:
                return

    async def _stream(
        self, idle_timeout_s: float | None
    ) -> AsyncGenerator[tuple[LogRecord | None, str, int], None]:
        """The job's stream messages with their writer and stream sequence, from the first
        (None for one that is no message of this job's log), through a consumer NATS
        permissions can keep to the reader's namespace."""
        reading = messaging.confined_reading(
            self._js, subjects.LOGS_STREAM, subjects.job_log_subjects(self.namespace, self.job_id))
        async with reading as sub:
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle_timeout_s or 3600.0)
                except NatsTimeoutError:
                    if idle_timeout_s is not None:
                        return
                    continue
                yield (decode_record(msg.data, self.job_id), subjects.log_writer(msg.subject),
                       msg.metadata.sequence.stream)


async def read_log(
    js: JetStreamContext, namespace: str, job_id: UUID, *, follow: bool,
    idle_timeout_s: float | None = None,
) -> AsyncIterator[LogMessage]:
    """Yield the job's log messages in order (see :meth:`LogReader.messages`)."""
    reading = LogReader(js, namespace, job_id).messages(follow=follow,
                                                        idle_timeout_s=idle_timeout_s)
    async with contextlib.aclosing(reading) as messages:
        async for message in messages:
            yield message


async def stored_log(nc: NATS, namespace: str, job_id: UUID) -> AsyncIterator[LogMessage]:
    """The job's log as the stream holds it, in reading order, ending at its end marker when
    it has one: as :func:`read_log` without ``follow`` reads a log not archived yet, but by
    batched direct gets, with no consumer made and deleted. For the platform's own readers
    (the logs service archiving it): see :func:`messaging.direct_batches`."""
    assembler = LogAssembler()
    stored = messaging.direct_batches(nc, subjects.LOGS_STREAM,
                                      subjects.job_log_subjects(namespace, job_id))
    async with contextlib.aclosing(stored) as messages:
        async for msg in messages:
            record = decode_record(msg.data, job_id)
            if record is None:
                continue
            writer = subjects.log_writer((msg.headers or {})[subjects.HEADER_SUBJECT])
            for each in assembler.add_record(record, writer):
                yield each
                if isinstance(each, LogEnd):
                    return
    for each in assembler.flush():
        yield each


class LiveLog:
    """A job's log, followed from before the job exists.

    A plain subscription to the job's log subjects taken before the submit sees every message
    as it is published, at no cost to the stream. It is checked, not trusted: an attempt's
    lines count only from the worker the platform's marker named, line numbers must run on
    without a gap and the end marker must count the lines seen. Anything else (a message
    dropped by a slow reader or a reconnect, a retried attempt, lines ahead of their marker,
    a marker without a count) and the rest comes from the stream, skipping the lines already
    given.
    """

    def __init__(self, nc: NATS, js: JetStreamContext, namespace: str, job_id: UUID) -> None:
        self.namespace = namespace
        self.job_id = job_id
        self._nc = nc
        self._js = js
        self._sub: Subscription | None = None
        self.fell_back = False  # whether the stream had to be read (for tests and benchmarks)

    async def open(self) -> LiveLog:
        """Start listening; submit the job only after this returned."""
        self._sub = await self._nc.subscribe(
            subjects.job_log_subjects(self.namespace, self.job_id))
        return self

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
            self._sub = None

    async def messages(self, *, idle_timeout_s: float | None = None) -> AsyncIterator[LogMessage]:
        """Yield every log message once, in order, until the end marker (or until nothing
        came for ``idle_timeout_s``, if given)."""
        if self._sub is None:
            raise RuntimeError("LiveLog.open() must be called before the job is submitted")
        given: dict[int, int] = {}  # attempt -> last line number given
        try:
            async for message in self._live(given, idle_timeout_s):
                yield message
                if isinstance(message, LogEnd):
                    return
        finally:
            await self.close()
        if self.fell_back:
            async for message in read_log(self._js, self.namespace, self.job_id, follow=True,
                                          idle_timeout_s=idle_timeout_s):
                if isinstance(message, LogBatch):
                    seen = given.get(message.attempt, 0)
                    lines = [line for line in message.lines if line.seq > seen]
                    if not lines:
                        continue
                    message = message.only(lines)
                    given[message.attempt] = lines[-1].seq
                yield message
                if isinstance(message, LogEnd):
                    return

    async def _live(
        self, given: dict[int, int], idle_timeout_s: float | None
    ) -> AsyncIterator[LogMessage]:
        """What the subscription proves complete; sets ``fell_back`` where it stops short."""
        assert self._sub is not None
        owners: dict[int, str] = {}  # attempt -> the worker the platform gave it to
        while True:
            try:
                msg = await self._sub.next_msg(timeout=idle_timeout_s or 3600.0)
            except NatsTimeoutError:
                if idle_timeout_s is not None:
                    return
                continue
            record = decode_record(msg.data, self.job_id)
            if record is None:
                continue
            try:
                message = _proven(record, subjects.log_writer(msg.subject), owners, given)
            except _Unproven:
                self.fell_back = True
                return
            if message is not None:
                yield message
                if isinstance(message, LogEnd):
                    return


class _Unproven(Exception):
    """What the subscription saw does not prove the log complete: read the stream."""


def _proven(record: LogRecord, writer: str, owners: dict[int, str],
            given: dict[int, int]) -> LogMessage | None:
    """What ``record`` from ``writer`` adds to a live log (None: nothing; ``given`` and
    ``owners`` kept up to date), or :class:`_Unproven`."""
    if writer == subjects.PLATFORM_LOG_WRITER:
        if isinstance(record, LogStart):
            owners.setdefault(record.attempt, str(record.worker_id))
        elif isinstance(record, LogEnd):
            if not (set(given) <= {record.attempt} and record.lines is not None
                    and given.get(record.attempt, 0) == record.lines):
                raise _Unproven
            return record
        return None
    if not isinstance(record, LogBatch):
        return None  # only the platform starts or ends an attempt
    owner = owners.get(record.attempt)
    if owner is None:  # lines ahead of their marker, or nobody's: the stream decides
        raise _Unproven
    if writer != owner:
        return None
    seen = given.get(record.attempt)
    if seen is None and given:  # a new attempt: the last one's tail is unproven
        raise _Unproven
    lines = [line for line in record.lines if line.seq > (seen or 0)]
    if not lines:
        return None  # a batch published twice (a retried publish)
    if lines[0].seq != (seen or 0) + 1:
        raise _Unproven
    given[record.attempt] = lines[-1].seq
    return record.only(lines)
