"""Lines a dead worker wrote after its job moved on to a later attempt are not shown."""

from __future__ import annotations

import uuid

import pytest
from nats.js import JetStreamContext

from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.logs import LogBatch, LogEnd, LogLine, LogStream
from tests.common.test_logreader import collect, publish

pytestmark = pytest.mark.nats


def _batch(job_id: uuid.UUID, attempt: int, seq: int, text: str) -> LogBatch:
    return LogBatch(job_id=job_id, attempt=attempt,
                    lines=[LogLine(seq, LogStream.STDOUT, 0.0, text)])


async def test_a_stale_attempts_lines_after_a_later_attempts_are_refused(
    js: JetStreamContext,
) -> None:
    job_id = uuid.uuid4()
    for message in (_batch(job_id, 1, 1, "first try"), _batch(job_id, 2, 1, "second try"),
                    _batch(job_id, 1, 2, "zombie"), _batch(job_id, 2, 2, "done"),
                    LogEnd(job_id=job_id, attempt=2, state=JobState.SUCCEEDED, exit_code=0)):
        await publish(js, job_id, message)
    for follow in (False, True):
        got = await collect(js, job_id, follow)
        texts = [line.text for m in got if isinstance(m, LogBatch) for line in m.lines]
        assert texts == ["first try", "second try", "done"]
