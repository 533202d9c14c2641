"""Reading a job's log: from the first line whenever the reader attaches, nothing left behind."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_common import messaging
from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.logs import (
    LogBatch,
    LogEnd,
    LogLine,
    LogMessage,
    LogRecord,
    LogStart,
    LogStream,
)
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.logreader import LiveLog, read_log, stored_log

pytestmark = pytest.mark.nats

NS = DEFAULT_NAMESPACE
# The worker each (job, attempt) was given to, as the platform's markers said.
_workers: dict[tuple[uuid.UUID, int], uuid.UUID] = {}


async def publish_as(js: JetStreamContext, job_id: uuid.UUID, writer: uuid.UUID | str,
                     record: LogRecord | bytes) -> None:
    data = record if isinstance(record, bytes) else msgspec.json.encode(record)
    await js.publish(subjects.job_logs(NS, job_id, writer), data)


async def publish(js: JetStreamContext, job_id: uuid.UUID, message: LogMessage) -> None:
    """Write as the platform and its workers do: an attempt's first batch after the marker
    naming its worker, its batches by that worker, the end by the platform."""
    if isinstance(message, LogEnd):
        await publish_as(js, job_id, subjects.PLATFORM_LOG_WRITER, message)
        return
    await publish_as(js, job_id, await worker_of(js, job_id, message.attempt), message)


async def worker_of(js: JetStreamContext, job_id: uuid.UUID, attempt: int) -> uuid.UUID:
    """The worker of the job's attempt, marked as given to it the first time it is asked."""
    if (job_id, attempt) not in _workers:
        worker = _workers[job_id, attempt] = uuid.uuid4()
        await publish_as(js, job_id, subjects.PLATFORM_LOG_WRITER,
                         LogStart(job_id=job_id, attempt=attempt, worker_id=worker))
    return _workers[job_id, attempt]


def batch(job_id: uuid.UUID, first: int, count: int) -> LogBatch:
    return LogBatch(job_id=job_id, attempt=1, lines=[
        LogLine(seq, LogStream.STDOUT, 0.0, f"line {seq}") for seq in range(first, first + count)])


async def collect(js: JetStreamContext, job_id: uuid.UUID, follow: bool) -> list[LogMessage]:
    return [m async for m in read_log(js, NS, job_id, follow=follow)]


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


async def test_a_followed_log_goes_on_past_what_existed_when_reading_began(
    js: JetStreamContext,
) -> None:
    job_id = uuid.uuid4()
    count = 13
    for first in range(1, count + 1):
        await publish(js, job_id, batch(job_id, first, 1))
    assert seqs(await collect(js, job_id, follow=False)) == list(range(1, count + 1))
    following = asyncio.create_task(collect(js, job_id, follow=True))
    await asyncio.sleep(0.2)  # past what existed
    await publish(js, job_id, batch(job_id, count + 1, 2))
    await publish(js, job_id, LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED,
                                     exit_code=0, lines=count + 2))
    messages = await asyncio.wait_for(following, 10)
    assert seqs(messages) == list(range(1, count + 3))
    assert isinstance(messages[-1], LogEnd)


async def test_readers_leave_no_consumer_behind(js: JetStreamContext) -> None:
    job_id = uuid.uuid4()
    for first in range(1, 11):
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
    live = await LiveLog(nc, js, NS, job_id).open()
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
    live = await LiveLog(nc, js, NS, job_id).open()
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
    live = await LiveLog(nc, js, NS, job_id).open()
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


async def test_lines_and_ends_written_by_any_other_worker_are_no_part_of_the_log(
    nc: NATS, js: JetStreamContext,
) -> None:
    """A worker may write under its own id in any job's log (a reusable one runs jobs not
    known when it registered): a reader takes an attempt's lines from its own worker only."""
    job_id = uuid.uuid4()
    intruder = uuid.uuid4()
    live = await LiveLog(nc, js, NS, job_id).open()
    reading = asyncio.create_task(follow_live(live))
    await publish(js, job_id, batch(job_id, 1, 2))
    forged = LogBatch(job_id=job_id, attempt=1, lines=[
        LogLine(seq, LogStream.STDOUT, 0.0, "forged") for seq in (3, 4)])
    await publish_as(js, job_id, intruder, forged)
    await publish_as(js, job_id, intruder, msgspec.structs.replace(forged, attempt=9))
    await publish_as(js, job_id, intruder, LogStart(job_id=job_id, attempt=1,
                                                    worker_id=intruder))
    await publish_as(js, job_id, intruder, LogEnd(job_id=job_id, attempt=1,
                                                  state=JobState.FAILED, exit_code=1, lines=2))
    await publish_as(js, job_id, intruder, b"not a log message")
    await publish(js, job_id, batch(job_id, 3, 1))
    end = LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED, exit_code=0, lines=3)
    await publish(js, job_id, end)
    for messages in (await reading, await collect(js, job_id, follow=True),
                     await collect(js, job_id, follow=False)):
        assert [line.text for m in messages if isinstance(m, LogBatch)
                for line in m.lines] == ["line 1", "line 2", "line 3"]
        assert messages[-1] == end


async def test_lines_stored_before_their_attempt_s_marker_wait_for_it(
    nc: NATS, js: JetStreamContext,
) -> None:
    """The marker and an attempt's first lines are published by different parties: the
    stream may hold the lines first."""
    job_id = uuid.uuid4()
    worker = uuid.uuid4()
    live = await LiveLog(nc, js, NS, job_id).open()
    reading = asyncio.create_task(follow_live(live))
    await publish_as(js, job_id, worker, batch(job_id, 1, 2))
    await publish_as(js, job_id, subjects.PLATFORM_LOG_WRITER,
                     LogStart(job_id=job_id, attempt=1, worker_id=worker))
    await publish_as(js, job_id, worker, batch(job_id, 3, 1))
    await publish_as(js, job_id, subjects.PLATFORM_LOG_WRITER, LogEnd(
        job_id=job_id, attempt=1, state=JobState.SUCCEEDED, exit_code=0, lines=3))
    live_messages = await reading
    assert live.fell_back
    for messages in (live_messages, await collect(js, job_id, follow=False)):
        assert seqs(messages) == [1, 2, 3]
        assert isinstance(messages[-1], LogEnd)


async def test_a_stored_log_read_by_direct_gets_is_what_a_reader_of_the_stream_gets(
    nc: NATS, js: JetStreamContext,
) -> None:
    """What the logs service archives: out of order, twice, another worker's lines and
    another job's log between them, the end; then a log with no end yet, and no log."""
    job_id, intruder = uuid.uuid4(), uuid.uuid4()
    for first, count in [(1, 2), (5, 2), (3, 2), (3, 2)]:
        await publish(js, job_id, batch(job_id, first, count))
        await publish(js, uuid.uuid4(), batch(job_id, 1, 1))
    await publish_as(js, job_id, intruder, batch(job_id, 7, 1))
    await publish(js, job_id, batch(job_id, 7, 300))
    end = LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED, exit_code=0, lines=306)
    await publish(js, job_id, end)
    stored = [m async for m in stored_log(nc, NS, job_id)]
    assert stored == await collect(js, job_id, follow=False)
    assert seqs(stored) == list(range(1, 307))
    assert stored[-1] == end

    unended = uuid.uuid4()
    await publish(js, unended, batch(unended, 1, 2))
    assert [m async for m in stored_log(nc, NS, unended)] == [batch(unended, 1, 2)]
    assert [m async for m in stored_log(nc, NS, uuid.uuid4())] == []


async def test_direct_batches_give_every_stored_message_once_across_requests(
    nc: NATS, js: JetStreamContext,
) -> None:
    job_id = uuid.uuid4()
    subject = subjects.job_logs(NS, job_id, subjects.PLATFORM_LOG_WRITER)
    for i in range(25):
        await js.publish(subject, str(i).encode() * (i + 1))
        await js.publish(subjects.job_logs(NS, uuid.uuid4(), "w"), b"other")
    for batch_size, max_bytes in [(7, 1 << 20), (100, 16), (1000, 1 << 20)]:
        got = [msg async for msg in messaging.direct_batches(
            nc, subjects.LOGS_STREAM, subjects.job_log_subjects(NS, job_id),
            batch=batch_size, max_bytes=max_bytes)]
        assert [m.data for m in got] == [str(i).encode() * (i + 1) for i in range(25)]
        assert {(m.headers or {})[subjects.HEADER_SUBJECT] for m in got} == {subject}
