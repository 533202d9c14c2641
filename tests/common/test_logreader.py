"""Reading a job's log: from the first line whenever the reader attaches, nothing left behind."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest
from nats.js import JetStreamContext

from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.logs import LogBatch, LogEnd, LogLine, LogMessage, LogStream
from hodei_common.logreader import read_log

pytestmark = pytest.mark.nats


async def publish(js: JetStreamContext, job_id: uuid.UUID, message: LogMessage) -> None:
    await js.publish(subjects.job_logs(job_id), msgspec.json.encode(message))


def batch(job_id: uuid.UUID, first: int, count: int) -> LogBatch:
    return LogBatch(job_id=job_id, attempt=1, lines=[
        LogLine(seq, LogStream.STDOUT, 0.0, f"line {seq}") for seq in range(first, first + count)])


async def collect(js: JetStreamContext, job_id: uuid.UUID, follow: bool) -> list[LogMessage]:
    return [m async for m in read_log(js, job_id, follow=follow)]


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


async def test_readers_leave_no_consumer_behind(js: JetStreamContext) -> None:
    job_id = uuid.uuid4()
    await publish(js, job_id, batch(job_id, 1, 1))
    await publish(js, job_id, LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED,
                                     exit_code=0))
    for _ in range(20):
        await collect(js, job_id, follow=True)
        await collect(js, job_id, follow=False)
    info = await js.stream_info(subjects.LOGS_STREAM)
    assert info.state.consumer_count == 0
