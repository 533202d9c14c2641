"""Durable consumers: ack on success, nak with delay on RetryLater, term on PermanentError."""

from __future__ import annotations

import asyncio
from collections import Counter
from uuid import uuid4

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from hodei_common.consumer import ConsumerSpec, consume, decode
from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobCreated
from hodei_common.errors import PermanentError, RetryLater
from hodei_common.testing import assert_eventually

pytestmark = pytest.mark.nats

JOB = uuid4()
CREATED = subjects.job_event(JOB, subjects.JOB_CREATED)
SPEC = ConsumerSpec(stream=subjects.JOB_EVENTS_STREAM, durable="test-consumer",
                    filter_subjects=[subjects.job_events(subjects.JOB_CREATED),
                                     subjects.job_events(subjects.JOB_CANCELLED)], ack_wait_s=5)


async def test_messages_are_acked_retried_or_dropped_as_the_handler_says(
    js: JetStreamContext,
) -> None:
    seen: Counter[bytes] = Counter()

    async def handler(msg: Msg) -> None:
        seen[msg.data] += 1
        if msg.data == b"retry" and seen[msg.data] < 3:
            raise RetryLater(0.05)
        if msg.data == b"poison":
            raise PermanentError("cannot ever handle this")
        if msg.data == b"flaky" and seen[msg.data] < 2:
            raise ConnectionError("database went away")

    for body in (b"ok", b"retry", b"poison", b"flaky"):
        await js.publish(CREATED, body)
    await js.publish(subjects.job_event(JOB, subjects.JOB_ASSIGNED), b"not ours")
    stopping = asyncio.Event()
    task = asyncio.create_task(consume(js, SPEC, handler, stopping, poll_s=0.2))
    await assert_eventually(
        lambda: seen == Counter({b"ok": 1, b"retry": 3, b"poison": 1, b"flaky": 2}),
        within_s=10, message=f"seen {seen}")
    stopping.set()
    await task
    info = await js.consumer_info(subjects.JOB_EVENTS_STREAM, SPEC.durable)
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_a_second_replica_shares_the_work_and_nothing_is_handled_twice(
    js: JetStreamContext,
) -> None:
    handled: list[tuple[int, bytes]] = []

    def handler_for(replica: int):  # type: ignore[no-untyped-def]
        async def handler(msg: Msg) -> None:
            handled.append((replica, msg.data))
            await asyncio.sleep(0.001)
        return handler

    stopping = asyncio.Event()
    tasks = [asyncio.create_task(consume(js, SPEC, handler_for(r), stopping, batch=5,
                                         poll_s=0.2)) for r in (1, 2)]
    for i in range(200):
        await js.publish(CREATED, str(i).encode())
    await assert_eventually(lambda: len(handled) >= 200, within_s=10)
    stopping.set()
    await asyncio.gather(*tasks)
    assert sorted(int(d) for _, d in handled) == list(range(200))
    assert {r for r, _ in handled} == {1, 2}


async def test_a_trigger_consumer_acknowledges_whole_batches_with_one_ack(
    js: JetStreamContext,
) -> None:
    spec = ConsumerSpec(stream=subjects.JOB_EVENTS_STREAM, durable="test-triggers",
                        filter_subjects=[subjects.job_events(subjects.JOB_CREATED)],
                        ack_batches=True)
    seen: list[bytes] = []

    async def handler(msg: Msg) -> None:
        seen.append(msg.data)

    for i in range(50):
        await js.publish(CREATED, str(i).encode())
    stopping = asyncio.Event()
    task = asyncio.create_task(consume(js, spec, handler, stopping, batch=16, poll_s=0.2))
    await assert_eventually(lambda: len(seen) == 50, within_s=10)

    async def all_acked() -> bool:
        info = await js.consumer_info(subjects.JOB_EVENTS_STREAM, spec.durable)
        return info.num_ack_pending == 0 and info.num_pending == 0

    await assert_eventually(all_acked, within_s=5)
    stopping.set()
    await task
    assert seen == [str(i).encode() for i in range(50)]


async def test_an_undecodable_message_is_dropped_not_retried(js: JetStreamContext) -> None:
    spec = ConsumerSpec(stream=subjects.JOB_EVENTS_STREAM, durable="test-decode",
                        filter_subjects=[subjects.job_events(subjects.JOB_CREATED)])
    tries: list[bytes] = []

    async def handler(msg: Msg) -> None:
        tries.append(msg.data)
        decode(msg, JobCreated)

    await js.publish(CREATED, b"not json")
    stopping = asyncio.Event()
    task = asyncio.create_task(consume(js, spec, handler, stopping, poll_s=0.2))

    async def settled() -> bool:
        if not tries:  # the consumer exists once the message was handled
            return False
        info = await js.consumer_info(subjects.JOB_EVENTS_STREAM, spec.durable)
        return info.num_ack_pending == 0 and info.num_pending == 0

    await assert_eventually(settled, within_s=5)
    stopping.set()
    await task
    assert tries == [b"not json"]  # terminated at once: never redelivered


async def test_ordered_by_keeps_each_keys_order_and_runs_keys_concurrently(
    js: JetStreamContext,
) -> None:
    spec = ConsumerSpec(stream=subjects.JOB_EVENTS_STREAM, durable="test-ordered",
                        filter_subjects=[subjects.job_events(subjects.JOB_CREATED)], ack_wait_s=5,
                        ordered_by=lambda msg: msg.data[:1].decode())
    handled: list[bytes] = []
    b_seen = asyncio.Event()

    async def handler(msg: Msg) -> None:
        if msg.data == b"a1":  # holds key a until key b ran: only possible concurrently
            await asyncio.wait_for(b_seen.wait(), 5)
        await asyncio.sleep(0.01 if msg.data.startswith(b"a") else 0)
        handled.append(msg.data)
        if msg.data.startswith(b"b"):
            b_seen.set()

    for body in (b"a1", b"a2", b"b1", b"a3", b"b2"):
        await js.publish(CREATED, body)
    stopping = asyncio.Event()
    task = asyncio.create_task(consume(js, spec, handler, stopping, poll_s=0.2))
    await assert_eventually(lambda: len(handled) == 5, within_s=10, message=f"{handled}")
    stopping.set()
    await task
    assert [m for m in handled if m.startswith(b"a")] == [b"a1", b"a2", b"a3"]
    assert [m for m in handled if m.startswith(b"b")] == [b"b1", b"b2"]
    assert handled.index(b"b1") < handled.index(b"a1")


async def test_a_slow_key_does_not_hold_back_other_keys_messages_fetched_after_it(
    js: JetStreamContext,
) -> None:
    """No fetch waits for the slowest message of the one before: b2, published while a1 is
    still being handled, is handled before a1 ends."""
    spec = ConsumerSpec(stream=subjects.JOB_EVENTS_STREAM, durable="test-keyed-flow",
                        filter_subjects=[subjects.job_events(subjects.JOB_CREATED)], ack_wait_s=5,
                        ordered_by=lambda msg: msg.data[:1].decode())
    handled: list[bytes] = []
    b2_handled = asyncio.Event()
    a1_tries = 0

    async def handler(msg: Msg) -> None:
        nonlocal a1_tries
        if msg.data == b"a1":
            a1_tries += 1
            await asyncio.wait_for(b2_handled.wait(), 3)  # fails, and a1 comes again, if not
        handled.append(msg.data)
        if msg.data == b"b2":
            b2_handled.set()

    for body in (b"a1", b"b1"):
        await js.publish(CREATED, body)
    stopping = asyncio.Event()
    task = asyncio.create_task(consume(js, spec, handler, stopping, poll_s=0.2))
    await assert_eventually(lambda: handled == [b"b1"], within_s=5, message=f"{handled}")
    await js.publish(CREATED, b"b2")
    await assert_eventually(lambda: len(handled) == 3, within_s=10, message=f"{handled}")
    stopping.set()
    await task
    assert handled == [b"b1", b"b2", b"a1"]
    assert a1_tries == 1


def test_a_batch_ack_cannot_be_combined_with_concurrent_handling() -> None:
    with pytest.raises(ValueError, match="in order"):
        ConsumerSpec(stream="S", durable="d", ack_batches=True, ordered_by=lambda m: m.subject)
