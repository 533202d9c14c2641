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
from uuid import UUID

import asyncpg
import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from hodei_common import logarchive, tracing
from hodei_common.consumer import ConsumerSpec, backoff_s, consume_batches, decode, handle
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
)
# The events of a fetch are archived together: their jobs read in one statement, their logs
# stored ARCHIVE_PARALLEL at a time, their archives recorded in one statement. Nobody waits
# for an archive (readers take the stream while it has the log), so an event that comes
# alone may wait up to ARCHIVE_LINGER_S for others to come with it.
ARCHIVE_FETCH = 64
ARCHIVE_PARALLEL = 8
ARCHIVE_LINGER_S = 1.0
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
        await consume_batches(self.js, ARCHIVE_EVENTS, self._archive_batch, self.stopping,
                              batch=ARCHIVE_FETCH, poll_s=ARCHIVE_LINGER_S)

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

    async def _archive_batch(self, msgs: list[Msg]) -> None:
        """Archive the finished jobs' logs of a fetch of terminal events (see ARCHIVE_FETCH):
        each event is acked once its job's archive is recorded (or found recorded), naked
        while its job has no terminal state, dropped when it names no job."""
        ids = {job_id for job_id in map(_job_of, msgs) if job_id is not None}
        try:
            async with self.pool.acquire() as conn:
                found = await store.to_archive(conn, list(ids))
        except Exception as e:
            log.warning("archive: could not read %d jobs (%s); retrying", len(ids), e)
            await _retry(msgs)
            return
        to_ack: list[Msg] = []  # recorded already, or by this batch
        stored: dict[UUID, tuple[list[Msg], jobs.LogArchive]] = {}
        parallel = asyncio.Semaphore(ARCHIVE_PARALLEL)

        async def archive(msg: Msg) -> None:
            job_id = decode(msg, JobEvent).job_id
            archived = await self._archive(msg, found.get(job_id), job_id, parallel)
            if archived is None:
                to_ack.append(msg)
            elif job_id in stored:  # the same job's event twice: one archive row
                stored[job_id][0].append(msg)
            else:
                stored[job_id] = ([msg], archived)

        await asyncio.gather(*(handle(msg, archive, ARCHIVE_EVENTS.durable, ack=False)
                               for msg in msgs))
        if stored:
            try:
                async with self.pool.acquire() as conn:
                    await jobs.record_log_archives(conn, [a for _, a in stored.values()])
            except Exception as e:
                log.warning("archive: could not record %d archives (%s); retrying",
                            len(stored), e)
                await _retry([msg for held, _ in stored.values() for msg in held])
            else:
                to_ack += [msg for held, _ in stored.values() for msg in held]
        for msg in to_ack:
            with contextlib.suppress(NatsError, TimeoutError):
                await msg.ack()

    async def _archive(self, msg: Msg, job: asyncpg.Record | None, job_id: UUID,
                       parallel: asyncio.Semaphore) -> jobs.LogArchive | None:
        """Store the finished job's log whole (ending it first if nobody did), telling
        JetStream meanwhile that ``msg`` is still being worked on; its archive to record, or
        None when it is recorded already."""
        if job is not None and job["archived"]:
            return None
        if job is None or job["state"] is None:
            raise RetryLater(1.0, f"job {job_id} is not finished yet")
        # A first delivery finds no earlier write: one is stored only before its event is
        # acknowledged, and an event not acknowledged comes again as a redelivery.
        first = (msg.metadata.num_delivered or 1) == 1
        keep_alive = asyncio.create_task(_in_progress(msg))
        try:
            async with parallel:
                stored = await self._store_log(job, first)
                if stored is None:  # the scheduler's end marker is missing: write, read again
                    await self._close_log(job)
                    stored = await self._store_log(job, first)
        finally:
            keep_alive.cancel()
        if stored is None:
            raise RetryLater(1.0, f"job {job_id}: its log has no end marker yet")
        end, written = stored
        log.debug("job %s: log archived (%d lines, %d bytes)", job_id, written.lines,
                  written.size_bytes)
        return jobs.LogArchive(
            job_id=job_id, attempt=end.attempt,
            storage_uri=logarchive.storage_uri(job["namespace"], job_id),
            size_bytes=written.size_bytes, entry_count=written.lines, sha256=written.sha256,
            truncated=written.truncated)

    async def _store_log(self, job: asyncpg.Record,
                         first: bool) -> tuple[LogEnd, logarchive.Written] | None:
        """Read the job's log from the stream and store it in the archive (``first``: see
        ``ArchiveWriter.store``); None (nothing stored) when it has no end marker."""
        namespace, job_id = job["namespace"], job["id"]
        writer = logarchive.ArchiveWriter()
        truncated = False
        try:
            async for message in stored_log(self.nc, namespace, job_id):
                writer.add(message)
                if isinstance(message, LogEnd):
                    written = await writer.store(self.js, namespace, job_id,
                                                 truncated=truncated, first=first)
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


async def _retry(msgs: list[Msg]) -> None:
    """Hand messages back to the stream, each for a later try (see ``backoff_s``)."""
    for msg in msgs:
        with contextlib.suppress(NatsError, TimeoutError):
            await msg.nak(delay=backoff_s(msg.metadata.num_delivered or 1))


def _job_of(msg: Msg) -> UUID | None:
    """The job a terminal event names; None for one that does not decode (its handling
    drops it)."""
    try:
        return msgspec.json.decode(msg.data, type=JobEvent).job_id
    except msgspec.DecodeError:
        return None
