"""The logs service against real NATS and PostgreSQL: archive, read-after-expiry, sweep; and
the archive itself: chunked round trip, digest, replacement, deletion."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from hodei_common import logarchive
from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobState, JobSucceeded
from hodei_common.contracts.logs import LogBatch, LogEnd, LogLine, LogMessage, LogStream
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.database import Conn
from hodei_common.lifecycle import jobs
from hodei_common.logreader import LogReader
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_common.testing.services import running
from hodei_logs import store as logs_store
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
                       ends: dict[int, str] | None = None, *, state: str = "SUCCEEDED",
                       announce: bool = True) -> uuid.UUID:
    """A SUCCEEDED job (or one in ``state``) with ``lines`` in its log, its end marker, and
    its terminal event unless ``announce`` is False (see :func:`announce_end`)."""
    job_id = uuid.uuid4()
    await pool.execute("INSERT INTO jobs (id, command, timeout_s, provider, state, exit_code) "
                       "VALUES ($1, 'true', 60, 'local', $2, 0)", job_id, state)
    for first in range(0, len(lines), 100):
        batch = LogBatch(job_id=job_id, attempt=1, lines=lines[first:first + 100],
                         ends=ends or {})
        await publish(js, job_id, batch)
    end = LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED, exit_code=0,
                 lines=len(lines))
    await publish(js, job_id, end)
    if announce:
        await announce_end(js, job_id)
    return job_id


async def announce_end(js: JetStreamContext, job_id: uuid.UUID) -> None:
    """The job's terminal event, as the relay publishes it."""
    event = JobSucceeded(event_id=uuid.uuid4(), occurred_at=datetime.now(UTC), job_id=job_id,
                         attempt=1, state=JobState.SUCCEEDED, exit_code=0)
    await js.publish(subjects.job_event(job_id, subjects.JOB_SUCCEEDED),
                     msgspec.json.encode(event))


def numbered(count: int, stream: LogStream = LogStream.STDOUT) -> list[LogLine]:
    return [LogLine(seq, stream, 1.0, f"line {seq}") for seq in range(1, count + 1)]


async def archive_row(pool: asyncpg.Pool, job_id: uuid.UUID) -> asyncpg.Record:
    async def row() -> asyncpg.Record | None:
        return await pool.fetchrow("SELECT * FROM job_log_files WHERE job_id = $1", job_id)

    found = await assert_eventually(row, within_s=15, message="the log was not archived")
    assert found is not None
    return found


async def stored_bytes(js: JetStreamContext, namespace: str, job_id: uuid.UUID) -> bytes:
    """The archive's bytes as stored, as an operator gets them out (see the docs)."""
    found = await logarchive.info(js, namespace, job_id)
    assert found is not None
    return b"".join([chunk async for chunk in logarchive.chunks(js, found)])


async def read_all(js: JetStreamContext, job_id: uuid.UUID) -> tuple[list[LogMessage], bool]:
    reader = LogReader(js, NS, job_id)
    messages = [m async for m in reader.messages(follow=True, idle_timeout_s=5)]
    return messages, reader.from_archive


async def test_a_finished_log_is_archived_recorded_and_read_after_the_stream_lost_it(
    logs_service: LogsService, pool: asyncpg.Pool, js: JetStreamContext,
) -> None:
    job_id = await finished_job(pool, js, numbered(2500), ends={7: "\r"})
    row = await archive_row(pool, job_id)
    assert row["storage_uri"] == (f"nats-stream://{subjects.LOG_ARCHIVE_STREAM}/"
                                  f"archive.{DEFAULT_NAMESPACE}.{job_id}.meta")
    assert (row["attempt"], row["entry_count"], row["truncated"]) == (1, 2500, False)
    stored = await stored_bytes(js, DEFAULT_NAMESPACE, job_id)
    assert row["size_bytes"] == len(stored)
    assert row["sha256"] == hashlib.sha256(stored).hexdigest()

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


async def test_ends_that_come_together_are_archived_together(
    logs_service: LogsService, pool: asyncpg.Pool, js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looked_up: list[int] = []
    recorded: list[list[uuid.UUID]] = []
    to_archive, record = logs_store.to_archive, jobs.record_log_archives

    async def counted_lookup(conn: Conn, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
        looked_up.append(len(job_ids))
        return await to_archive(conn, job_ids)

    async def counted_record(conn: Conn, archives: Sequence[jobs.LogArchive]) -> None:
        recorded.append([a.job_id for a in archives])
        await record(conn, archives)

    monkeypatch.setattr(logs_store, "to_archive", counted_lookup)
    monkeypatch.setattr(jobs, "record_log_archives", counted_record)
    done = [await finished_job(pool, js, numbered(i + 1), announce=False) for i in range(12)]
    unfinished = await finished_job(pool, js, numbered(2), state="RUNNING", announce=False)
    # Twelve ends, one of them twice, and the end of a job whose state is not terminal yet.
    await asyncio.gather(*(announce_end(js, job) for job in [*done, done[0], unfinished]))

    async def all_archived() -> bool:
        return await pool.fetchval("SELECT count(*) FROM job_log_files") == 12

    await assert_eventually(all_archived, within_s=15,
                            message="the twelve finished logs were not archived")
    assert sorted(job for batch in recorded for job in batch) == sorted(done)  # each once
    assert len(recorded) <= 3, recorded  # a statement for a batch, not for a job
    assert len(looked_up) <= 4, looked_up
    # The job that was not finished is asked about again, and archived once it is.
    await pool.execute("UPDATE jobs SET state = 'SUCCEEDED' WHERE id = $1", unfinished)
    assert (await archive_row(pool, unfinished))["entry_count"] == 2

    async def settled() -> tuple[int, int]:
        # Acknowledged once recorded: the row can be seen a moment before the ack arrives.
        info = await js.consumer_info(subjects.JOB_EVENTS_STREAM,
                                      subjects.LOGS_ARCHIVE_CONSUMER)
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
        return info.num_pending, info.num_ack_pending

    await assert_eventually(settled, within_s=5)


async def test_only_a_redelivered_end_looks_for_an_earlier_archive_and_replaces_it(
    logs_service: LogsService, pool: asyncpg.Pool, js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looked_for: list[uuid.UUID] = []
    info, record = logarchive.info, jobs.record_log_archives
    failing = {"left": 0}

    async def watched_info(js: JetStreamContext, namespace: str,
                           job_id: uuid.UUID) -> logarchive.Archived | None:
        looked_for.append(job_id)
        return await info(js, namespace, job_id)

    async def crashing_record(conn: Conn, archives: Sequence[jobs.LogArchive]) -> None:
        if failing["left"]:
            failing["left"] -= 1
            raise ConnectionResetError("the database went away")
        await record(conn, archives)

    monkeypatch.setattr(logarchive, "info", watched_info)
    monkeypatch.setattr(jobs, "record_log_archives", crashing_record)
    # A first delivery stores without a lookup.
    first = await finished_job(pool, js, numbered(3))
    await archive_row(pool, first)
    assert first not in looked_for
    # Stored, then not recorded: the end comes again, finds that write and replaces it.
    failing["left"] = 1
    again = await finished_job(pool, js, numbered(4))
    row = await archive_row(pool, again)
    assert looked_for.count(again) == 1
    found = await info(js, DEFAULT_NAMESPACE, again)
    assert found is not None
    assert row["sha256"] == found.sha256
    assert await subject_counts(js, DEFAULT_NAMESPACE, again) == {
        subjects.log_archive_meta(DEFAULT_NAMESPACE, again): 1,
        subjects.log_archive_chunks(DEFAULT_NAMESPACE, again, found.put): found.chunks}


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
    assert await logarchive.info(js, DEFAULT_NAMESPACE, old) is None
    assert await logarchive.info(js, DEFAULT_NAMESPACE, recent) is not None
    await asyncio.sleep(0.3)  # a few more sweeps
    assert await pool.fetchval("SELECT count(*) FROM job_log_files") == 1


# --- the archive itself ----------------------------------------------------------------------

def noisy(count: int) -> list[LogLine]:
    """Lines that compress poorly, so that a few thousand of them make several chunks."""
    return [LogLine(seq, LogStream.STDOUT, 1.0, hashlib.sha256(str(seq).encode()).hexdigest() * 2)
            for seq in range(1, count + 1)]


async def store(js: JetStreamContext, namespace: str, job_id: uuid.UUID,
                messages: list[LogMessage]) -> logarchive.Written:
    writer = logarchive.ArchiveWriter()
    try:
        for message in messages:
            writer.add(message)
        return await writer.store(js, namespace, job_id, truncated=False)
    finally:
        writer.discard()


def a_log(job_id: uuid.UUID, lines: list[LogLine]) -> list[LogMessage]:
    batches: list[LogMessage] = [LogBatch(job_id=job_id, attempt=1, lines=lines[i:i + 100])
                                 for i in range(0, len(lines), 100)]
    return [*batches, LogEnd(job_id=job_id, attempt=1, state=JobState.SUCCEEDED, exit_code=0,
                             lines=len(lines))]


async def subject_counts(js: JetStreamContext, namespace: str,
                         job_id: uuid.UUID) -> dict[str, int]:
    info = await js.stream_info(subjects.LOG_ARCHIVE_STREAM,
                                subjects_filter=subjects.log_archive_job(namespace, job_id))
    return info.state.subjects or {}


async def test_a_large_log_is_archived_in_chunks_and_read_back_whole(
    js: JetStreamContext,
) -> None:
    await logarchive.ensure_archive(js)
    await logarchive.ensure_archive(js)  # it exists: kept
    job_id = uuid.uuid4()
    log = a_log(job_id, noisy(20_000))
    written = await store(js, "team-a", job_id, log)
    found = await logarchive.info(js, "team-a", job_id)
    assert found is not None
    assert (found.size_bytes, found.sha256, found.lines) == (
        written.size_bytes, written.sha256, 20_000)
    assert found.chunks == -(-written.size_bytes // logarchive.CHUNK_BYTES) > 3
    counts = await subject_counts(js, "team-a", job_id)
    assert counts[subjects.log_archive_chunks("team-a", job_id, found.put)] == found.chunks
    assert [m async for m in logarchive.read(js, found)] == log
    # Stored as gzip'd JSON lines: what an operator gets out reads with zcat.
    stored = await stored_bytes(js, "team-a", job_id)
    first = gzip.decompress(stored).split(b"\n")[0]
    assert msgspec.json.decode(first, type=LogMessage) == log[0]
    # Another namespace has no archive of that job.
    assert await logarchive.info(js, "team-b", job_id) is None


async def test_an_archive_that_does_not_match_its_digest_or_is_no_gzip_log_is_refused(
    js: JetStreamContext,
) -> None:
    await logarchive.ensure_archive(js)
    job_id = uuid.uuid4()
    await store(js, DEFAULT_NAMESPACE, job_id, a_log(job_id, noisy(3000)))
    found = await logarchive.info(js, DEFAULT_NAMESPACE, job_id)
    assert found is not None
    forged = msgspec.structs.replace(found, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(logarchive.ArchiveError, match="does not match its digest"):
        [m async for m in logarchive.read(js, forged)]
    # Bytes that are no gzip'd log, though they match the meta: refused as corrupt.
    junk = b"not a gzip stream"
    await js.publish(subjects.log_archive_chunks(DEFAULT_NAMESPACE, job_id, "junk"), junk)
    corrupt = msgspec.structs.replace(found, put="junk", chunks=1, size_bytes=len(junk),
                                      sha256=hashlib.sha256(junk).hexdigest())
    with pytest.raises(logarchive.ArchiveError, match="is corrupt"):
        [m async for m in logarchive.read(js, corrupt)]
    # No consumer is left behind by a reading, failed or not.
    assert (await js.stream_info(subjects.LOG_ARCHIVE_STREAM)).state.consumer_count == 0


async def test_a_rewritten_archive_replaces_the_earlier_and_a_deleted_one_is_gone(
    js: JetStreamContext,
) -> None:
    await logarchive.ensure_archive(js)
    job_id, other = uuid.uuid4(), uuid.uuid4()
    await store(js, DEFAULT_NAMESPACE, other, a_log(other, noisy(10)))
    await store(js, DEFAULT_NAMESPACE, job_id, a_log(job_id, noisy(3000)))
    second = a_log(job_id, noisy(5))
    await store(js, DEFAULT_NAMESPACE, job_id, second)
    found = await logarchive.info(js, DEFAULT_NAMESPACE, job_id)
    assert found is not None
    assert found.lines == 5
    assert [m async for m in logarchive.read(js, found)] == second
    # One meta and the new write's chunks: the earlier write's are purged.
    assert await subject_counts(js, DEFAULT_NAMESPACE, job_id) == {
        subjects.log_archive_meta(DEFAULT_NAMESPACE, job_id): 1,
        subjects.log_archive_chunks(DEFAULT_NAMESPACE, job_id, found.put): found.chunks}

    await logarchive.delete(js, DEFAULT_NAMESPACE, job_id)
    await logarchive.delete(js, DEFAULT_NAMESPACE, job_id)  # gone already: fine
    assert await logarchive.info(js, DEFAULT_NAMESPACE, job_id) is None
    assert await subject_counts(js, DEFAULT_NAMESPACE, job_id) == {}
    assert await logarchive.info(js, DEFAULT_NAMESPACE, other) is not None


async def test_no_job_has_an_archive_before_the_archive_stream_exists(
    js: JetStreamContext,
) -> None:
    assert await logarchive.info(js, DEFAULT_NAMESPACE, uuid.uuid4()) is None
