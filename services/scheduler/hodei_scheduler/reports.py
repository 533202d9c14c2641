"""What agents report (accepted, started, finished) turned into job and worker transitions.

Every transition is conditional on the report's (job_id, attempt, worker_id), so a report
from an older attempt, or a redelivered one, changes nothing.
"""

from __future__ import annotations

import logging
from typing import Protocol
from uuid import NAMESPACE_URL, UUID, uuid5

import asyncpg

from hodei_common.contracts.agent import StatusKind, StatusReport
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.logs import LogEnd
from hodei_common.database import Conn
from hodei_common.errors import PermanentError
from hodei_common.lifecycle import jobs
from hodei_common.metrics import Metrics
from hodei_scheduler import store
from hodei_scheduler.directory import WorkerProviders

log = logging.getLogger(__name__)

ACTOR = "scheduler"


class ReportEffects(Protocol):
    """What the scheduler does once a report is applied (or refused)."""

    def worker_freed(self) -> None:
        """A worker is READY again (committed) while a job of its provider waits: a dispatch
        pass may pair them. (With none waiting, no pass need look at it.)"""

    async def cancel_pending(self, job_id: UUID, attempt: int, worker_id: UUID) -> None:
        """The job's cancel was asked for before its agent said it took or started it."""

    async def job_finished(self, namespace: str, end: LogEnd) -> None:
        """The job (of ``namespace``) reached its terminal state: its log can end."""

    async def stop_worker(self, worker_id: UUID, reason: str) -> None:
        """A worker the platform counts as gone reported: it must stop."""


class ReportHandler:
    """Applies one status report at a time."""

    def __init__(self, pool: asyncpg.Pool, *, providers: WorkerProviders,
                 effects: ReportEffects, metrics: Metrics) -> None:
        self._pool = pool
        self._metrics = metrics
        self._providers = providers
        self._effects = effects

    async def apply(self, report: StatusReport) -> bool:
        """Apply ``report``; False when it was stale or already applied."""
        if report.kind is StatusKind.FINISHED:
            return await self._finish(report)
        async with self._pool.acquire() as conn:
            if report.kind is StatusKind.ACCEPTED:
                row = await jobs.accept(conn, report, actor=ACTOR)
            else:  # an agent that starts its job at once reports STARTED only: it says both
                row = await jobs.start(conn, report, actor=ACTOR)
        if row is None:
            await self._refuse(report)
            return False
        if row["cancel_requested_at"] is not None:
            await self._effects.cancel_pending(report.job_id, report.attempt, report.worker_id)
        return True

    async def _finish(self, report: StatusReport) -> bool:
        """End the job and, in the same statement, free or retire its worker."""
        if report.outcome is None:
            raise PermanentError(f"finished report of job {report.job_id} has no outcome")
        async with self._pool.acquire() as conn:
            provider = await self._providers.provider(conn, report.worker_id)
            row = await jobs.finish(conn, report, report.outcome, provider=provider,
                                    actor=ACTOR)
        if row is None:
            await self._refuse(report)
            return False
        if row["freed"] and row["waiting"]:
            self._effects.worker_freed()
        state = JobState(jobs.FINISHING[report.outcome].target)
        # Counted from what the statement returned: no query of its own.
        self._metrics.job_finished(row["provider"], state, created_at=row["created_at"],
                                   started_at=row["started_at"],
                                   completed_at=row["completed_at"])
        self._metrics.log_lines.inc(report.log_lines or 0)
        await self._effects.job_finished(row["namespace"], LogEnd(
            job_id=report.job_id, attempt=report.attempt, state=state,
            exit_code=report.exit_code, error=report.error, lines=report.log_lines))
        if row["freed"] and not row["waiting"]:
            # Asked again now that the worker is READY to every later statement: a job queued
            # by a submit that still saw it BUSY has committed by now, or the pass its wake-up
            # hint starts will find the worker. After the log's end, which a caller waits for.
            async with self._pool.acquire() as conn:
                if await store.jobs_waiting(conn, row["provider"]):
                    self._effects.worker_freed()
        return True

    async def _refuse(self, report: StatusReport) -> None:
        """A report that changed nothing: repeated (ignored), or stale: the result of an
        attempt the job has moved past, or from a worker that never held this attempt. A stale
        one is recorded once (``StaleReportRefused``). Either way a reporter declared dead is
        told to stop."""
        async with self._pool.acquire() as conn:
            now = await store.job_now(conn, report.job_id, report.worker_id)
            if now is None:
                return
            # A FINISHED report of an older attempt always comes from a worker declared lost
            # (a finished attempt is never requeued); an earlier kind may just be an applied
            # report delivered again, so it is only ignored.
            stale = ((now["attempt"] > report.attempt and report.kind is StatusKind.FINISHED)
                     or (now["attempt"] == report.attempt
                         and now["worker_id"] != report.worker_id))
            if stale:
                await self._record_stale(conn, report, now["attempt"])
            else:
                log.info("ignored a repeated %s report of job %s attempt %d", report.kind,
                         report.job_id, report.attempt)
        if now["reporter_state"] in ("FAILED", "TERMINATED"):
            await self._effects.stop_worker(report.worker_id, "this worker is "
                                            f"{now['reporter_state']} to the platform")

    async def _record_stale(self, conn: Conn, report: StatusReport, current: int) -> None:
        event_id = uuid5(NAMESPACE_URL, f"hodei:stale:{report.job_id}:{report.attempt}:"
                                        f"{report.kind}:{report.worker_id}")
        await jobs.refuse_stale_report(conn, report, current, event_id=event_id, actor=ACTOR)
        log.warning("refused a %s report of job %s attempt %d from worker %s: the job is at "
                    "attempt %d", report.kind, report.job_id, report.attempt, report.worker_id,
                    current)
