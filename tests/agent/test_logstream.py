"""The batched log publisher and the line reader, against a JetStream that acks on demand."""

from __future__ import annotations

import asyncio
from typing import Any, cast
from uuid import uuid4

import msgspec
import pytest
from nats.js import JetStreamContext

from hodei_agent.logstream import LogPublisher, pump_lines
from hodei_common.contracts import subjects
from hodei_common.contracts.logs import LogBatch, LogStream
from hodei_common.testing import assert_eventually


class FakeJetStream:
    """Stores published batches; holds the acks back while ``acking`` is clear."""

    def __init__(self) -> None:
        self.batches: list[LogBatch] = []
        self.msg_ids: list[str] = []
        self.subjects: set[str] = set()
        self.waiting = 0
        self.acking = asyncio.Event()
        self.acking.set()

    async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> None:
        self.msg_ids.append(kwargs["headers"][subjects.HEADER_MSG_ID])
        self.subjects.add(subject)
        self.waiting += 1
        await self.acking.wait()
        self.waiting -= 1
        self.batches.append(msgspec.json.decode(payload, type=LogBatch))


WORKER = uuid4()


def publisher(js: FakeJetStream, **knobs: Any) -> LogPublisher:
    settings: dict[str, Any] = dict(max_lines=10, max_bytes=64 * 1024, linger_s=0.002,
                                    max_in_flight=2, publish_attempts=1, publish_timeout_s=1.0)
    settings.update(knobs)
    logs = LogPublisher(cast(JetStreamContext, js), uuid4(), 1, namespace="team-a",
                        worker_id=WORKER, **settings)
    logs.start()
    return logs


async def test_batches_are_cut_by_line_count_and_every_line_is_acked_by_close() -> None:
    js = FakeJetStream()
    logs = publisher(js, linger_s=60.0)
    for i in range(25):
        await logs.write(LogStream.STDOUT, f"line {i}")
    assert await logs.close() == 25
    assert [len(b.lines) for b in js.batches] == [10, 10, 5]
    assert [line.seq for b in js.batches for line in b.lines] == list(range(1, 26))
    first = js.batches[0]
    assert js.msg_ids == [subjects.msg_id(first.job_id, 1, seq, WORKER) for seq in (1, 11, 21)]
    assert js.subjects == {subjects.job_logs("team-a", first.job_id, WORKER)}


async def test_batches_are_cut_by_size() -> None:
    js = FakeJetStream()
    logs = publisher(js, max_lines=1000, max_bytes=1024, linger_s=60.0)
    for _ in range(4):
        await logs.write(LogStream.STDERR, "x" * 500)
    await logs.close()
    assert [len(b.lines) for b in js.batches] == [2, 2]


async def test_a_lone_line_goes_out_after_the_linger_without_more_output() -> None:
    js = FakeJetStream()
    logs = publisher(js, max_lines=500, linger_s=0.005)
    await logs.write(LogStream.STDOUT, "hello")
    await assert_eventually(lambda: js.batches)
    assert [line.text for line in js.batches[0].lines] == ["hello"]
    await logs.close()


async def test_writers_wait_while_batches_are_unacknowledged() -> None:
    js = FakeJetStream()
    js.acking.clear()
    logs = publisher(js, max_lines=10, max_in_flight=2)

    async def flood() -> None:
        for i in range(1000):
            await logs.write(LogStream.STDOUT, str(i))

    writer = asyncio.create_task(flood())
    await assert_eventually(lambda: js.waiting == 2)
    # 2 batches in flight and 2 cut waiting for a slot: the writer is stalled.
    await assert_eventually(lambda: logs.count == 40)
    for _ in range(5):
        await asyncio.sleep(0)
    assert logs.count == 40
    assert not writer.done()
    js.acking.set()
    await writer
    await logs.close()
    assert [line.seq for b in js.batches for line in b.lines] == list(range(1, 1001))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a\nb\n", ["a", "b"]),
        (b"a\n\nlast", ["a", "", "last"]),
        (b"x" * 25 + b"\n", ["x" * 10, "x" * 10, "x" * 5]),
        ("€".encode() * 6, ["€€€", "€€€"]),  # never cut inside a character
        (b"bad \xff byte\n", ["bad \ufffd byte"]),
    ],
)
async def test_lines_are_split_capped_and_decoded(data: bytes, expected: list[str]) -> None:
    js = FakeJetStream()
    logs = publisher(js)
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    await pump_lines(reader, LogStream.STDOUT, logs, max_line_bytes=10)
    await logs.close()
    assert [line.text for b in js.batches for line in b.lines] == expected


async def test_a_carriage_return_split_from_its_newline_by_a_read_is_one_terminator() -> None:
    js = FakeJetStream()
    logs = publisher(js)
    reader = asyncio.StreamReader()
    reader.feed_data(b"10%\r20%\r")
    await asyncio.sleep(0)
    pumping = asyncio.create_task(pump_lines(reader, LogStream.STDOUT, logs, 100))
    await asyncio.sleep(0.01)
    reader.feed_data(b"\ndone")
    reader.feed_eof()
    await pumping
    await logs.close()
    batch_lines = [(b, line) for b in js.batches for line in b.lines]
    assert [b.data_of(line) for b, line in batch_lines] == [b"10%\r", b"20%\r\n", b"done"]


async def test_writers_past_the_cap_are_not_held_up_and_the_drop_is_told() -> None:
    js = FakeJetStream()
    logs = publisher(js, max_total_bytes=11)
    for text in ["12345", "6789", "dropped", "also dropped"]:
        await logs.write(LogStream.STDOUT, text)
    assert await logs.close() == 4  # two lines and two notices
    lines = [line for b in js.batches for line in b.lines]
    assert [line.stream for line in lines] == [LogStream.STDOUT, LogStream.STDOUT,
                                               LogStream.SYSTEM, LogStream.SYSTEM]
    assert lines[3].text.startswith("output truncated: 21 bytes in 2 lines")
