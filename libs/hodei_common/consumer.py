"""Durable JetStream consumers: explicit ack, shared by every replica, one handler per message.

A handler raises :class:`~hodei_common.errors.RetryLater` for a delayed nak and
:class:`~hodei_common.errors.PermanentError` to terminate the message; any other error naks it
with backoff. Handlers must be idempotent: a message may come again after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
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

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]
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
    await ensure_consumer(js, spec.stream, spec.config())
    sub = await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
    try:
        while not stopping.is_set():
            try:
                msgs = await sub.fetch(batch, timeout=poll_s)
            except TimeoutError:  # nats-py raises its own or asyncio's: both mean "nothing yet"
                continue
            except NatsError as e:  # disconnected: the client reconnects on its own
                log.warning("%s: fetch failed (%s)", spec.durable, e)
                await asyncio.sleep(0.5)
                continue
            if spec.ordered_by is None:
                await _handle_in_order(msgs, handler, spec, stopping)
            else:
                groups: dict[str, list[Msg]] = {}
                for msg in msgs:
                    groups.setdefault(spec.ordered_by(msg), []).append(msg)
                await asyncio.gather(*(_handle_in_order(group, handler, spec, stopping)
                                       for group in groups.values()))
    finally:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()


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
