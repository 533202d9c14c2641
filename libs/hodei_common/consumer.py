"""Durable JetStream consumers: explicit ack, shared by every replica, one handler per message.

A handler raises :class:`~hodei_common.errors.RetryLater` for a delayed nak and
:class:`~hodei_common.errors.PermanentError` to terminate the message; any other error naks it
with backoff. Handlers must be idempotent: a message may come again after a crash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hodei_common import logconfig, tracing
from hodei_common.errors import PermanentError, RetryLater
from hodei_common.messaging import ensure_consumer
from hodei_common.waiting import wait_any

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]
BatchHandler = Callable[[list[Msg]], Awaitable[None]]
T = TypeVar("T")


def decode(msg: Msg, kind: type[T]) -> T:
    """A message body as ``kind``; one that can never decode is dropped, not retried."""
    try:
        value = msgspec.json.decode(msg.data, type=kind)
    except msgspec.DecodeError as e:
        raise PermanentError(f"undecodable {getattr(kind, '__name__', kind)} on "
                             f"{msg.subject}: {e}") from e
    job_id = getattr(value, "job_id", None)
    if job_id is not None:  # the handler's log lines name the job (see :func:`handle`)
        logconfig.JOB_ID.set(str(job_id))
    return value


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer on one stream."""

    stream: str
    durable: str
    filter_subjects: list[str] = field(default_factory=list)
    ack_wait_s: float = 30.0
    max_deliver: int = 50
    max_ack_pending: int = 1000
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    # Triggers (messages that only say "look again") need no ack each: one ack of the last
    # message of a fetched batch acknowledges the whole batch.
    ack_batches: bool = False
    # Messages with the same key are handled one after another, in stream order; those with
    # different keys (say, two workers' reports) concurrently. None: one at a time.
    ordered_by: Callable[[Msg], str] | None = None

    def __post_init__(self) -> None:
        if self.ack_batches and self.ordered_by is not None:
            raise ValueError("a batch ack needs the batch handled in order")

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            filter_subjects=self.filter_subjects or None,
            ack_policy=AckPolicy.ALL if self.ack_batches else AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            deliver_policy=self.deliver_policy,
        )


def backoff_s(deliveries: int) -> float:
    """Delay before the next try of a message that failed ``deliveries`` times."""
    return float(min(0.1 * 2 ** max(deliveries - 1, 0), 10.0))


async def handle(msg: Msg, handler: Handler, name: str, *, ack: bool = True) -> None:
    """Run one message through ``handler`` inside its trace, then ack (unless ``ack`` is
    False: a later ack covers it), nak or term it. Lines logged meanwhile name the job the
    message is about once :func:`decode` found one, and no other message's."""
    with tracing.message_span(name, msg.subject, msg.headers), \
            logconfig.job_context(None):
        try:
            await handler(msg)
        except RetryLater as e:
            await msg.nak(delay=e.delay)
        except PermanentError as e:
            log.error("%s: dropping %s: %s", name, msg.subject, e)
            await msg.term()
        except Exception:
            deliveries = msg.metadata.num_delivered or 1
            log.exception("%s: %s failed (delivery %d); retrying", name, msg.subject, deliveries)
            await msg.nak(delay=backoff_s(deliveries))
        else:
            if ack:
                await msg.ack()


async def consume(
    js: JetStreamContext,
    spec: ConsumerSpec,
    handler: Handler,
    stopping: asyncio.Event,
    *,
    batch: int = 64,
    poll_s: float = 1.0,
) -> None:
    """Fetch and handle messages until ``stopping`` is set; messages fetched but not yet
    handled when it is set go back to the stream at once."""
    async with _bound(js, spec) as sub:
        if spec.ordered_by is not None:
            await _KeyedHandling(spec, spec.ordered_by, handler, stopping, batch).run(sub, poll_s)
            return
        while not stopping.is_set():
            msgs = await _fetch(sub, spec, batch, poll_s)
            await _handle_in_order(msgs, handler, spec, stopping)


async def consume_batches(
    js: JetStreamContext,
    spec: ConsumerSpec,
    handler: BatchHandler,
    stopping: asyncio.Event,
    *,
    batch: int = 64,
    poll_s: float = 1.0,
) -> None:
    """Fetch until ``stopping`` is set and give each fetch's messages to ``handler`` at
    once, for work that costs less done for many (one statement for all of them). The
    handler settles every message itself (see :func:`handle` with ``ack=False``).

    A fetch returns what the stream holds at once; when it holds nothing, the first
    message that comes within ``poll_s`` and those after it until then: under load a batch
    is what came while the last one was handled, and a lone message waits at most
    ``poll_s``."""
    async with _bound(js, spec) as sub:
        while not stopping.is_set():
            msgs = await _fetch(sub, spec, batch, poll_s)
            if msgs:
                await handler(msgs)


@contextlib.asynccontextmanager
async def _bound(js: JetStreamContext,
                 spec: ConsumerSpec) -> AsyncIterator[JetStreamContext.PullSubscription]:
    """A pull subscription on ``spec``'s durable (declared first)."""
    await ensure_consumer(js, spec.stream, spec.config())
    sub = await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
    try:
        yield sub
    finally:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()


async def _fetch(sub: JetStreamContext.PullSubscription, spec: ConsumerSpec, batch: int,
                 poll_s: float) -> list[Msg]:
    """Up to ``batch`` messages as soon as there is one; none after ``poll_s``."""
    try:
        return await sub.fetch(batch, timeout=poll_s)
    except TimeoutError:  # nats-py raises its own or asyncio's: both mean "nothing yet"
        return []
    except NatsError as e:  # disconnected: the client reconnects on its own
        log.warning("%s: fetch failed (%s)", spec.durable, e)
        await asyncio.sleep(0.5)
        return []


class _KeyedHandling:
    """Messages handled as they come, without waiting for a whole fetch to be done: those of
    one key one after another in stream order, those of different keys side by side, at most
    ``limit`` held at once (fetching pauses meanwhile)."""

    def __init__(self, spec: ConsumerSpec, key: Callable[[Msg], str], handler: Handler,
                 stopping: asyncio.Event, limit: int) -> None:
        self._spec = spec
        self._key = key
        self._handler = handler
        self._stopping = stopping
        self._limit = limit
        self._waiting: dict[str, collections.deque[Msg]] = {}
        self._held = 0
        self._freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, sub: JetStreamContext.PullSubscription, poll_s: float) -> None:
        try:
            while not self._stopping.is_set():
                if self._held >= self._limit:
                    self._freed.clear()
                    await wait_any(self._stopping, self._freed, within_s=poll_s)
                    continue
                # One at a time: a fetch of more waits, once its first message came, for the
                # rest of its batch until its pull request ends, which a request made after a
                # stale status (an earlier request's time-out) only does at its expiry: the
                # message that came is held back meanwhile (seen: half a second). Messages
                # already delivered are taken from the client's queue without a request.
                for msg in await _fetch(sub, self._spec, 1, poll_s):
                    self._take(msg)
            # Stopping: each key's message under way is finished, the rest handed back.
            await asyncio.gather(*self._tasks)
            for queue in self._waiting.values():
                for msg in queue:
                    await msg.nak()
        finally:
            for task in self._tasks:
                task.cancel()

    def _take(self, msg: Msg) -> None:
        self._held += 1
        key = self._key(msg)
        queue = self._waiting.get(key)
        if queue is not None:  # its key's earlier messages are being handled
            queue.append(msg)
            return
        self._waiting[key] = collections.deque([msg])
        task = asyncio.create_task(self._drain(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, key: str) -> None:
        queue = self._waiting[key]
        while queue and not self._stopping.is_set():
            await handle(queue[0], self._handler, self._spec.durable)
            queue.popleft()
            self._held -= 1
            self._freed.set()
        if not queue:
            del self._waiting[key]


async def _handle_in_order(
    msgs: list[Msg], handler: Handler, spec: ConsumerSpec, stopping: asyncio.Event
) -> None:
    """Handle ``msgs`` one after another; once ``stopping`` is set, hand the rest back."""
    for i, msg in enumerate(msgs):
        if stopping.is_set():
            for rest in msgs[i:]:
                await rest.nak()
            return
        last = i == len(msgs) - 1
        await handle(msg, handler, spec.durable, ack=not spec.ack_batches or last)
