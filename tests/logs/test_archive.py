"""The logs service against real NATS and PostgreSQL: archive, read-after-expiry, sweep."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from hodei_common import logarchive
from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobState, JobSucceeded
from hodei_common.contracts.logs import LogBatch, LogEnd, LogLine, LogMessage, LogStream
from hodei_common.logreader import LogReader
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_common.testing.services import running
from hodei_logs.config import LogsSettings
from hodei_logs.service import LogsService
from tests.common.test_logreader import NS, publish

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


@pytest.fixture
async def logs_service(settings: Settings) -> AsyncIterator[LogsService]:
    service = LogsService(LogsSettings(**{
        **settings.model_dump(), "log_archive_max_age_s": 3600, "log_archive_sweep_s": 0.1}))
    async with running([service]):
        yield service


async def finished_job(pool: asyncpg.Pool, js: JetStreamContext, lines: list[LogLine],
                       ends: dict[int, str] | None = None) -> uuid.UUID:
    """A SUCCEEDED job with ``lines`` in its log, its end marker, and its terminal event."""
    job_id = uuid.uuid4()
    await pool.execute("INSERT INTO jobs (id, command, timeout_s, provider, state, exit_code) "
                       "VALUES ($1, 'true', 60, 'local', 'SUCCEEDED', 0)", job_id)
    for first in range(0, len(lines), 100):
        batch = LogBatch(job_id=job_id, attempt=1, lines=lines[first:first + 100],
                         ends=ends or {})
        await publish(js, job_id, batch)
    end = LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED, exit_code=0,
                 lines=len(lines))
    await publish(js, job_id, end)
    event = JobSucceeded(event_id=uuid.uuid4(), occurred_at=datetime.now(UTC), job_id=job_id,
                         attempt=1, state=JobState.SUCCEEDED, exit_code=0)
    await js.publish(subjects.JOB_SUCCEEDED, msgspec.json.encode(event))
    return job_id


def numbered(count: int, stream: LogStream = LogStream.STDOUT) -> list[LogLine]:
    return [LogLine(seq, stream, 1.0, f"line {seq}") for seq in range(1, count + 1)]


async def archive_row(pool: asyncpg.Pool, job_id: uuid.UUID) -> asyncpg.Record:
    async def row() -> asyncpg.Record | None:
        return await pool.fetchrow("SELECT * FROM job_log_files WHERE job_id = $1", job_id)

    found = await assert_eventually(row, within_s=15, message="the log was not archived")
    assert found is not None
    return found


async def read_all(js: JetStreamContext, job_id: uuid.UUID) -> tuple[list[LogMessage], bool]:
    reader = LogReader(js, NS, job_id)
    messages = [m async for m in reader.messages(follow=True, idle_timeout_s=5)]
    return messages, reader.from_archive


async def test_a_finished_log_is_archived_recorded_and_read_after_the_stream_lost_it(
    logs_service: LogsService, pool: asyncpg.Pool, js: JetStreamContext,
) -> None:
    job_id = await finished_job(pool, js, numbered(2500), ends={7: "\r"})
    row = await archive_row(pool, job_id)
    assert row["storage_uri"] == f"nats-object://{subjects.LOG_ARCHIVE_BUCKET}/{job_id}"
    assert (row["attempt"], row["entry_count"], row["truncated"]) == (1, 2500, False)
    stored = await (await js.object_store(subjects.LOG_ARCHIVE_BUCKET)).get(str(job_id))
    assert row["size_bytes"] == len(stored.data or b"")
    assert row["sha256"] == hashlib.sha256(stored.data or b"").hexdigest()

    # The stream's retention drops the log: readers get it, whole, from the archive.
    await js.purge_stream(subjects.LOGS_STREAM)
    messages, from_archive = await read_all(js, job_id)
    assert from_archive
    batches = [m for m in messages if isinstance(m, LogBatch)]
    assert [line.text for b in batches for line in b.lines] == [f"line {i}"
                                                                for i in range(1, 2501)]
    assert any(b.ends == {7: "\r"} for b in batches)
    assert messages[-1] == LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED,
                                  exit_code=0, lines=2500)


async def test_a_log_cut_at_its_cap_marks_the_job_and_its_archive_truncated(
    logs_service: LogsService, pool: asyncpg.Pool, js: JetStreamContext,
) -> None:
    lines = [*numbered(3), LogLine(4, LogStream.SYSTEM, 1.0, "output truncated: ...")]
    job_id = await finished_job(pool, js, lines)
    assert (await archive_row(pool, job_id))["truncated"]
    assert await pool.fetchval("SELECT log_truncated FROM jobs WHERE id = $1", job_id)


async def test_archives_past_their_age_are_deleted(
    logs_service: LogsService, pool: asyncpg.Pool, js: JetStreamContext,
) -> None:
    old, recent = [await finished_job(pool, js, numbered(3)) for _ in range(2)]
    await archive_row(pool, old)
    await archive_row(pool, recent)
    await pool.execute("UPDATE job_log_files SET created_at = now() - interval '2 hours' "
                       "WHERE job_id = $1", old)

    async def gone() -> bool:
        return not await pool.fetchval("SELECT 1 FROM job_log_files WHERE job_id = $1", old)

    await assert_eventually(gone, within_s=10, message="the old archive was not swept")
    assert await logarchive.info(js, old) is None
    assert await logarchive.info(js, recent) is not None
    await asyncio.sleep(0.3)  # a few more sweeps
    assert await pool.fetchval("SELECT count(*) FROM job_log_files") == 1
