"""Reading a job's log: everything so far, or everything until the end marker.

:func:`read_log` reads the stream from the job's first message, so a reader that attaches
after the job finished still gets every line, then the end marker. :class:`LiveLog` follows
a job it is about to submit (``hodei job run``) without making a stream consumer, falling back
to :func:`read_log` whenever it cannot prove it saw every line.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from uuid import UUID

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from hodei_common.contracts import subjects
from hodei_common.contracts.logs import LogBatch, LogEnd, LogMessage


async def _last_seq(js: JetStreamContext, job_id: UUID) -> int:
    """The stream sequence of the job's newest log message, 0 when it has none."""
    try:
        last = await js.get_last_msg(subjects.LOGS_STREAM, subjects.job_logs(job_id))
    except NotFoundError:
        return 0
    return int(last.seq or 0)


async def read_log(
    js: JetStreamContext, job_id: UUID, *, follow: bool, idle_timeout_s: float | None = None
) -> AsyncIterator[LogMessage]:
    """Yield the job's log messages in order.

    Without ``follow`` it stops at the newest message that existed when called; with it, it
    stops after the end marker (or when nothing arrives for ``idle_timeout_s``, if given).
    Lines of an attempt stored after a later attempt's are refused: they come from a worker
    declared dead that kept writing before it was stopped (the stream keeps them).
    """
    until = None if follow else await _last_seq(js, job_id)
    if until == 0:
        return
    sub = await js.subscribe(
        subjects.job_logs(job_id),
        stream=subjects.LOGS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        # Backstop only: the consumer is deleted below; a reader that dies leaves one that
        # the server drops this long after its interest went away.
        inactive_threshold=5.0,
    )
    newest_attempt = 0
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_timeout_s or 3600.0)
            except NatsTimeoutError:
                if idle_timeout_s is not None:
                    return
                continue
            message = msgspec.json.decode(msg.data, type=LogMessage)
            if isinstance(message, LogBatch) and message.attempt < newest_attempt:
                continue  # a stale attempt's late lines
            newest_attempt = max(newest_attempt, message.attempt)
            yield message
            if isinstance(message, LogEnd):
                return
            if until is not None and msg.metadata.sequence.stream >= until:
                return
    finally:
        # Every `job run` and `job logs` makes a consumer; leaving them to expire piles up
        # thousands under load and the stream refuses new readers.
        with contextlib.suppress(NatsError, TimeoutError):
            name = (await sub.consumer_info()).name
            await sub.unsubscribe()
            if name:
                await js.delete_consumer(subjects.LOGS_STREAM, name)


class LiveLog:
    """A job's log, followed from before the job exists.

    A plain subscription to ``job.<id>.logs`` taken before the submit sees every message as it
    is published, at no cost to the stream. It is checked, not trusted: line numbers must run
    on without a gap and the end marker must count the lines seen. Anything else (a message
    dropped by a slow reader or a reconnect, a retried attempt, a marker without a count) and
    the rest comes from the stream, skipping the lines already given.
    """

    def __init__(self, nc: NATS, js: JetStreamContext, job_id: UUID) -> None:
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
            async for message in read_log(self._js, self.job_id, follow=True,
                                          idle_timeout_s=idle_timeout_s):
                if isinstance(message, LogBatch):
                    seen = given.get(message.attempt, 0)
                    lines = [line for line in message.lines if line.seq > seen]
                    if not lines:
                        continue
                    message = LogBatch(job_id=message.job_id, attempt=message.attempt,
                                       lines=lines)
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
            yield message if len(lines) == len(message.lines) else LogBatch(
                job_id=message.job_id, attempt=message.attempt, lines=lines)
