"""Reading a job's log: from the first line whenever the reader attaches, nothing left behind."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.logs import LogBatch, LogEnd, LogLine, LogMessage, LogStream
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.logreader import DIRECT_READS, LiveLog, read_log

pytestmark = pytest.mark.nats


async def publish(js: JetStreamContext, job_id: uuid.UUID, message: LogMessage) -> None:
    await js.publish(subjects.job_logs(job_id), msgspec.json.encode(message))


def batch(job_id: uuid.UUID, first: int, count: int) -> LogBatch:
    return LogBatch(job_id=job_id, attempt=1, lines=[
        LogLine(seq, LogStream.STDOUT, 0.0, f"line {seq}") for seq in range(first, first + count)])


async def collect(js: JetStreamContext, job_id: uuid.UUID, follow: bool) -> list[LogMessage]:
    return [m async for m in read_log(js, DEFAULT_NAMESPACE, job_id, follow=follow)]


async def test_a_reader_attaching_after_the_end_gets_every_line_then_the_marker(
    js: JetStreamContext,
) -> None:
    job_id = uuid.uuid4()
    await publish(js, job_id, batch(job_id, 1, 3))
    await publish(js, job_id, batch(job_id, 4, 2))
    await publish(js, uuid.uuid4(), batch(job_id, 1, 1))  # another job's log
    end = LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED, exit_code=0)
    await publish(js, job_id, end)
    messages = await collect(js, job_id, follow=True)
    assert messages[-1] == end
    lines = [line.seq for m in messages if isinstance(m, LogBatch) for line in m.lines]
    assert lines == [1, 2, 3, 4, 5]


async def test_without_follow_reading_stops_at_what_exists_now(js: JetStreamContext) -> None:
    job_id = uuid.uuid4()
    assert await collect(js, job_id, follow=False) == []
    await publish(js, job_id, batch(job_id, 1, 2))
    assert await collect(js, job_id, follow=False) == [batch(job_id, 1, 2)]


async def test_follow_waits_for_lines_written_later(js: JetStreamContext) -> None:
    job_id = uuid.uuid4()
    reader = asyncio.create_task(collect(js, job_id, follow=True))
    await publish(js, job_id, batch(job_id, 1, 1))
    await publish(js, job_id, LogEnd(job_id=job_id, attempt=1, state=JobState.FAILED,
                                     exit_code=3))
    messages = await asyncio.wait_for(reader, 10)
    assert [type(m) for m in messages] == [LogBatch, LogEnd]


async def test_a_log_longer_than_the_direct_reads_continues_through_a_consumer(
    js: JetStreamContext,
) -> None:
    job_id = uuid.uuid4()
    count = DIRECT_READS + 5
    for first in range(1, count + 1):
        await publish(js, job_id, batch(job_id, first, 1))
    assert seqs(await collect(js, job_id, follow=False)) == list(range(1, count + 1))
    following = asyncio.create_task(collect(js, job_id, follow=True))
    await asyncio.sleep(0.2)  # past what existed: these come through the consumer
    await publish(js, job_id, batch(job_id, count + 1, 2))
    await publish(js, job_id, LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED,
                                     exit_code=0, lines=count + 2))
    messages = await asyncio.wait_for(following, 10)
    assert seqs(messages) == list(range(1, count + 3))
    assert isinstance(messages[-1], LogEnd)


async def test_readers_leave_no_consumer_behind(js: JetStreamContext) -> None:
    job_id = uuid.uuid4()
    for first in range(1, DIRECT_READS + 3):  # long enough to need a consumer
        await publish(js, job_id, batch(job_id, first, 1))
    await publish(js, job_id, LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED,
                                     exit_code=0))
    for _ in range(20):
        await collect(js, job_id, follow=True)
        await collect(js, job_id, follow=False)
    info = await js.stream_info(subjects.LOGS_STREAM)
    assert info.state.consumer_count == 0


def seqs(messages: list[LogMessage]) -> list[int]:
    return [line.seq for m in messages if isinstance(m, LogBatch) for line in m.lines]


async def follow_live(live: LiveLog) -> list[LogMessage]:
    return [m async for m in live.messages(idle_timeout_s=5)]


async def test_a_live_log_opened_before_the_job_sees_it_all_without_the_stream(
    nc: NATS, js: JetStreamContext,
) -> None:
    job_id = uuid.uuid4()
    live = await LiveLog(nc, js, DEFAULT_NAMESPACE, job_id).open()
    reading = asyncio.create_task(follow_live(live))
    await publish(js, job_id, batch(job_id, 1, 3))
    await publish(js, job_id, batch(job_id, 1, 3))  # a retried publish: said once only
    await publish(js, job_id, batch(job_id, 4, 2))
    end = LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED, exit_code=0, lines=5)
    await publish(js, job_id, end)
    messages = await reading
    assert seqs(messages) == [1, 2, 3, 4, 5]
    assert messages[-1] == end
    assert not live.fell_back


async def test_a_live_log_that_missed_lines_reads_the_rest_from_the_stream_once(
    nc: NATS, js: JetStreamContext,
) -> None:
    job_id = uuid.uuid4()
    await publish(js, job_id, batch(job_id, 1, 2))  # before anyone listened
    live = await LiveLog(nc, js, DEFAULT_NAMESPACE, job_id).open()
    reading = asyncio.create_task(follow_live(live))
    await publish(js, job_id, batch(job_id, 3, 2))
    await publish(js, job_id, LogEnd(job_id=job_id, attempt=1, state=JobState.FAILED,
                                     exit_code=3, lines=4))
    messages = await reading
    assert seqs(messages) == [1, 2, 3, 4]
    assert isinstance(messages[-1], LogEnd)
    assert messages[-1].exit_code == 3
    assert live.fell_back


@pytest.mark.parametrize("lines", [None, 9])
async def test_an_end_marker_that_does_not_vouch_for_the_lines_seen_means_reading_the_stream(
    nc: NATS, js: JetStreamContext, lines: int | None,
) -> None:
    job_id = uuid.uuid4()
    live = await LiveLog(nc, js, DEFAULT_NAMESPACE, job_id).open()
    reading = asyncio.create_task(follow_live(live))
    await publish(js, job_id, batch(job_id, 1, 2))
    await publish(js, job_id, LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED,
                                     exit_code=0, lines=lines))
    messages = await reading
    assert seqs(messages) == [1, 2]  # the stream holds nothing more, and nothing twice
    assert isinstance(messages[-1], LogEnd)
    assert live.fell_back


async def test_batches_stored_out_of_order_or_twice_are_read_in_line_order_once(
    js: JetStreamContext,
) -> None:
    job_id = uuid.uuid4()
    # A publish retried while the next batches got through: the stream holds 3-4 late.
    for first, count in [(1, 2), (5, 2), (3, 2), (3, 2), (7, 1)]:
        await publish(js, job_id, batch(job_id, first, count))
    await publish(js, job_id, LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED,
                                     exit_code=0, lines=7))
    assert seqs(await collect(js, job_id, follow=True)) == [1, 2, 3, 4, 5, 6, 7]
    assert seqs(await collect(js, job_id, follow=False)) == [1, 2, 3, 4, 5, 6, 7]


async def test_every_attempt_is_shown_in_turn_each_from_its_first_line(
    js: JetStreamContext,
) -> None:
    job_id = uuid.uuid4()
    await publish(js, job_id, batch(job_id, 1, 3))
    second = LogBatch(job_id=job_id, attempt=2, lines=[
        LogLine(seq, LogStream.STDERR, 0.0, f"again {seq}") for seq in (1, 2)])
    await publish(js, job_id, second)
    await publish(js, job_id, LogEnd(job_id=job_id, attempt=2, state=JobState.SUCCEEDED,
                                     exit_code=0, lines=2))
    messages = await collect(js, job_id, follow=True)
    assert [(m.attempt, line.seq) for m in messages if isinstance(m, LogBatch)
            for line in m.lines] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
