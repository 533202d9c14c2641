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
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from hodei_common import logarchive
from hodei_common.contracts import subjects
from hodei_common.contracts.logs import LogBatch, LogEnd, LogMessage

# Out-of-order batches (a publish retried while later ones got through) are held back until
# the gap fills; past this many, the gap is taken as lines that are gone.
MAX_HELD_BATCHES = 64


class LogAssembler:
    """Puts a log's messages in reading order: each attempt's lines once, by line number.

    Attempts follow one another as the stream has them; a batch of an attempt that arrives
    ahead of its turn waits until the lines before it came (or the log ends). A batch of an
    attempt older than one already seen is refused: a worker declared dead that kept writing
    for a moment before its stop order landed (the stream keeps those lines).
    """

    def __init__(self) -> None:
        self._next: dict[int, int] = {}  # attempt -> the line number expected next
        self._held: dict[int, list[LogBatch]] = {}
        self._attempt: int | None = None
        self._newest = 0

    def add(self, message: LogMessage) -> list[LogMessage]:
        """What can be given now that ``message`` came, in order."""
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
        """Everything held, gaps and all (the log ended, or the reader stops here)."""
        out: list[LogMessage] = []
        for attempt in list(self._held):
            out += self._flush(attempt)
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


DIRECT_READS = 8


async def _last_seq(js: JetStreamContext, job_id: UUID) -> int:
    """The stream sequence of the job's newest log message, 0 when it has none."""
    try:
        last = await js.get_last_msg(subjects.LOGS_STREAM, subjects.job_logs(job_id))
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
        until = await _last_seq(self._js, self.job_id)
        if until == 0:
            self.caught_up = True
            if not follow:
                return
        assembler = LogAssembler()
        async with contextlib.aclosing(self._stream(idle_timeout_s, until, follow)) as stream:
            async for message in self._assembled(stream, assembler, until, follow):
                yield message
                if isinstance(message, LogEnd):
                    return

    async def _assembled(
        self,
        stream: AsyncIterator[tuple[LogMessage, int]],
        assembler: LogAssembler,
        until: int,
        follow: bool,
    ) -> AsyncIterator[LogMessage]:
        async for message, seq in stream:
            if seq >= until:
                self.caught_up = True
            given = assembler.add(message)
            if not follow and self.caught_up:
                given += assembler.flush()  # this reading ends here
            for each in given:
                yield each
                if isinstance(each, LogEnd):
                    return
            if not follow and self.caught_up:
                return

    async def _stream(
        self, idle_timeout_s: float | None, until: int, follow: bool
    ) -> AsyncGenerator[tuple[LogMessage, int], None]:
        """The job's stream messages with their stream sequence, from the first.

        Most logs are a few messages: the first ``DIRECT_READS`` are fetched one by one
        (next message on the job's subject), which costs less than making a consumer; a longer
        log, or one followed past what exists, goes on with an ordered consumer.
        """
        subject = subjects.job_logs(self.job_id)
        decoder = msgspec.json.Decoder(LogMessage)
        seq = 0
        for _ in range(DIRECT_READS):
            if seq >= until:
                break
            try:
                raw = await self._js.get_msg(subjects.LOGS_STREAM, seq=seq + 1, subject=subject,
                                             next=True)
            except NotFoundError:  # the rest expired meanwhile
                break
            seq = int(raw.seq or 0)
            yield decoder.decode(raw.data or b""), seq
        if seq >= until and not follow:
            return
        start = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                               opt_start_seq=seq + 1) if seq else None
        sub = await self._js.subscribe(
            subject,
            stream=subjects.LOGS_STREAM,
            ordered_consumer=True,
            deliver_policy=None if seq else DeliverPolicy.ALL,
            config=start,
            # Backstop only: the consumer is deleted below; a reader that dies leaves one
            # that the server drops this long after its interest went away.
            inactive_threshold=5.0,
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle_timeout_s or 3600.0)
                except NatsTimeoutError:
                    if idle_timeout_s is not None:
                        return
                    continue
                yield decoder.decode(msg.data), msg.metadata.sequence.stream
        finally:
            # Every `job run` and `job logs` makes a consumer; leaving them to expire piles up
            # thousands under load and the stream refuses new readers.
            with contextlib.suppress(NatsError, TimeoutError):
                name = (await sub.consumer_info()).name
                await sub.unsubscribe()
                if name:
                    await self._js.delete_consumer(subjects.LOGS_STREAM, name)


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


class LiveLog:
    """A job's log, followed from before the job exists.

    A plain subscription to ``job.<id>.logs`` taken before the submit sees every message as it
    is published, at no cost to the stream. It is checked, not trusted: line numbers must run
    on without a gap and the end marker must count the lines seen. Anything else (a message
    dropped by a slow reader or a reconnect, a retried attempt, a marker without a count) and
    the rest comes from the stream, skipping the lines already given.
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
        self._sub = await self._nc.subscribe(subjects.job_logs(self.job_id))
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
        while True:
            try:
                msg = await self._sub.next_msg(timeout=idle_timeout_s or 3600.0)
            except NatsTimeoutError:
                if idle_timeout_s is not None:
                    return
                continue
            message = msgspec.json.decode(msg.data, type=LogMessage)
            if isinstance(message, LogEnd):
                complete = set(given) <= {message.attempt} and message.lines is not None \
                    and given.get(message.attempt, 0) == message.lines
                if not complete:
                    self.fell_back = True
                    return
                yield message
                return
            seen = given.get(message.attempt)
            if seen is None and given:  # a new attempt: the last one's tail is unproven
                self.fell_back = True
                return
            lines = [line for line in message.lines if line.seq > (seen or 0)]
            if not lines:
                continue  # a batch published twice (a retried publish)
            if lines[0].seq != (seen or 0) + 1:
                self.fell_back = True
                return
            given[message.attempt] = lines[-1].seq
            yield message.only(lines)
