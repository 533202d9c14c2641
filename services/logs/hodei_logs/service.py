"""The logs service: ends every finished job's log, archives it, and sweeps old archives.

The end marker is written after the job reached its terminal state, and the agent publishes
every line (acknowledged) before it reports the job finished, so the marker is the last
message of the job's log. A reader can always wait for it.

Once the marker is there, the whole log (every line once, in order, then the marker) is
stored in the archive stream under the job's namespace and recorded in ``job_log_files``;
readers take it from there when the stream no longer has it. Archives older than
``HODEI_LOG_ARCHIVE_MAX_AGE_S`` are deleted by a sweep that one replica at a time runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import ClassVar

import asyncpg
import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from hodei_common import logarchive, tracing
from hodei_common.consumer import ConsumerSpec, consume, decode
from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobEvent, JobState
from hodei_common.contracts.logs import LogBatch, LogEnd, LogMessage, LogRecord, LogStream
from hodei_common.database import LOCK_LOG_SWEEP, exclusive
from hodei_common.errors import RetryLater
from hodei_common.lifecycle import jobs
from hodei_common.logreader import stored_log
from hodei_common.runner import HodeiService, Loop
from hodei_common.waiting import pause
from hodei_logs import store
from hodei_logs.config import LogsSettings

log = logging.getLogger(__name__)

TERMINAL = [subjects.job_events(event) for event in (
    subjects.JOB_SUCCEEDED, subjects.JOB_FAILED, subjects.JOB_CANCELLED, subjects.JOB_TIMED_OUT)]
ARCHIVE_EVENTS = ConsumerSpec(
    stream=subjects.JOB_EVENTS_STREAM, durable=subjects.LOGS_ARCHIVE_CONSUMER,
    filter_subjects=TERMINAL,
    # A logs service that dies holding an event leaves it for the consumer's ack_wait (the
    # default 30 s); storing a log of millions of lines takes longer, so the handler says
    # "in progress" every ARCHIVE_PROGRESS_S while it works.
    # Every event is another job's: archive a fetched batch's logs side by side.
    ordered_by=lambda msg: str(msg.metadata.sequence.stream),
)
ARCHIVE_BATCH = 8
ARCHIVE_PROGRESS_S = 10.0  # well within the consumer's ack_wait
SWEEP_BATCH = 100


class LogsService(HodeiService):
    """Writes end-of-log markers, archives finished logs, deletes expired archives."""

    name: ClassVar[str] = "logs"
    description: ClassVar[str] = "Hodei logs: per-job log streams"
    consumers: ClassVar[tuple[ConsumerSpec, ...]] = (ARCHIVE_EVENTS,)
    settings: LogsSettings

    def __init__(self, settings: LogsSettings) -> None:
        super().__init__(settings)

    async def setup(self) -> None:
        await logarchive.ensure_archive(self.js)

    def loops(self) -> list[Loop]:
        return [self._archives, self._sweep]

    async def _archives(self) -> None:
        await consume(self.js, ARCHIVE_EVENTS, self._archive, self.stopping,
                      batch=ARCHIVE_BATCH)

    async def _close_log(self, job: asyncpg.Record) -> None:
        """Write the end marker unless the log has one: usually the scheduler ended the log as
        the job finished; not for a job cancelled while queued, or when its publish failed."""
        subject = subjects.platform_logs(job["namespace"], job["id"])
        if await self._already_closed(subject):
            return
        marker = LogEnd(job_id=job["id"], attempt=job["attempt"], state=JobState(job["state"]),
                        exit_code=job["exit_code"], error=job["error"])
        await self.js.publish(
            subject, msgspec.json.encode(marker),
            headers=tracing.inject({subjects.HEADER_MSG_ID: subjects.msg_id(job["id"], "end")}),
        )

    async def _already_closed(self, subject: str) -> bool:
        """Whether the platform's last word in the log is already its end marker (a
        redelivery)."""
        try:
            last = await self.js.get_last_msg(subjects.LOGS_STREAM, subject, direct=True)
        except NotFoundError:
            return False
        try:
            return isinstance(msgspec.json.decode(last.data or b"", type=LogRecord), LogEnd)
        except msgspec.DecodeError:
            return False

    async def _archive(self, msg: Msg) -> None:
        """Archive the job's log, telling JetStream it is still being worked on meanwhile."""
        keep_alive = asyncio.create_task(_in_progress(msg))
        try:
            await self._archive_log(msg)
        finally:
            keep_alive.cancel()

    async def _archive_log(self, msg: Msg) -> None:
        """Store the finished job's log whole and record it (idempotent), ending it first if
        nobody did."""
        job_id = decode(msg, JobEvent).job_id
        async with self.pool.acquire() as conn:
            job = await store.to_archive(conn, job_id)
        if job is not None and job["archived"]:
            return
        if job is None or job["state"] is None:
            raise RetryLater(1.0, f"job {job_id} is not finished yet")
        stored = await self._store_log(job)
        if stored is None:  # the scheduler's end marker is missing: write it, read again
            await self._close_log(job)
            stored = await self._store_log(job)
        if stored is None:
            raise RetryLater(1.0, f"job {job_id}: its log has no end marker yet")
        end, written = stored
        async with self.pool.acquire() as conn:
            await jobs.record_log_archive(
                conn, job_id, end.attempt,
                storage_uri=logarchive.storage_uri(job["namespace"], job_id),
                size_bytes=written.size_bytes, entry_count=written.lines,
                sha256=written.sha256, truncated=written.truncated)
        log.debug("job %s: log archived (%d lines, %d bytes)", job_id, written.lines,
                  written.size_bytes)

    async def _store_log(self, job: asyncpg.Record) -> tuple[LogEnd, logarchive.Written] | None:
        """Read the job's log from the stream and store it in the archive; None (nothing
        stored) when it has no end marker."""
        namespace, job_id = job["namespace"], job["id"]
        writer = logarchive.ArchiveWriter()
        truncated = False
        try:
            async for message in stored_log(self.nc, namespace, job_id):
                writer.add(message)
                if isinstance(message, LogEnd):
                    written = await writer.store(self.js, namespace, job_id,
                                                 truncated=truncated)
                    return message, written
                truncated = truncated or _has_notice(message)
            return None
        finally:
            writer.discard()

    async def _sweep(self) -> None:
        """Delete archives past their age, every ``log_archive_sweep_s``, one replica at a
        time."""
        while not self.stopping.is_set():
            if self.settings.log_archive_max_age_s > 0:
                try:
                    await self.sweep_archives()
                except (NatsError, OSError, TimeoutError) as e:
                    log.warning("archive sweep failed (%s); next one retries", e)
            await pause(self.stopping, self.settings.log_archive_sweep_s)

    async def sweep_archives(self) -> int | None:
        """Delete the archives past their age; None when another replica is sweeping."""
        swept = 0
        async with exclusive(self.pool, LOCK_LOG_SWEEP) as mine:
            if not mine:
                return None
            while True:
                async with self.pool.acquire() as conn:
                    jobs = await store.expired(conn, self.settings.log_archive_max_age_s,
                                               SWEEP_BATCH)
                if not jobs:
                    break
                for namespace, job_id in jobs:
                    await logarchive.delete(self.js, namespace, job_id)
                async with self.pool.acquire() as conn:
                    await store.forget(conn, [job_id for _, job_id in jobs])
                swept += len(jobs)
        if swept:
            log.info("deleted %d archived logs older than %gs", swept,
                     self.settings.log_archive_max_age_s)
        return swept


async def _in_progress(msg: Msg) -> None:
    """Every ARCHIVE_PROGRESS_S, extend the message's ack deadline."""
    while True:
        await asyncio.sleep(ARCHIVE_PROGRESS_S)
        with contextlib.suppress(NatsError, TimeoutError):
            await msg.in_progress()


def _has_notice(message: LogMessage) -> bool:
    """Whether a batch holds a line of the platform's own (a truncation notice)."""
    return isinstance(message, LogBatch) and any(
        line.stream is LogStream.SYSTEM for line in message.lines)
