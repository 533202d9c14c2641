"""What agents report (accepted, started, finished) turned into job and worker transitions.

Every transition is conditional on the report's (job_id, attempt, worker_id), so a report
from an older attempt, or a redelivered one, changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from hodei_common import outbox
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Outcome, StatusKind, StatusReport
from hodei_common.contracts.jobs import (
    JobAccepted,
    JobCancelled,
    JobFailed,
    JobStarted,
    JobState,
    JobSucceeded,
    JobTimedOut,
)
from hodei_common.contracts.logs import LogEnd
from hodei_common.contracts.workers import WorkerMode, WorkerReady, WorkerTerminating
from hodei_common.database import Conn
from hodei_common.errors import PermanentError
from hodei_scheduler import store

log = logging.getLogger(__name__)

ACTOR = "scheduler"

_TERMINAL: dict[Outcome, tuple[JobState, str, type[Any]]] = {
    Outcome.SUCCEEDED: (JobState.SUCCEEDED, subjects.JOB_SUCCEEDED, JobSucceeded),
    Outcome.FAILED: (JobState.FAILED, subjects.JOB_FAILED, JobFailed),
    Outcome.TIMED_OUT: (JobState.TIMED_OUT, subjects.JOB_TIMED_OUT, JobTimedOut),
}


def _now() -> datetime:
    return datetime.now(UTC)


class ReportHandler:
    """Applies one status report; ``on_worker_ready`` and ``on_cancel_pending`` are hooks."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        on_worker_ready: Callable[[], None],
        on_cancel_pending: Callable[[UUID, int, UUID], Any],
        on_finished: Callable[[LogEnd], Awaitable[None]],
    ) -> None:
        self._pool = pool
        self._on_finished = on_finished
        self._on_worker_ready = on_worker_ready
        self._on_cancel_pending = on_cancel_pending

    async def apply(self, report: StatusReport) -> bool:
        """Apply ``report``; False when it was stale or already applied."""
        if report.kind is StatusKind.FINISHED:
            return await self._finish(report)
        accepted = report.kind is StatusKind.ACCEPTED
        kind = JobAccepted if accepted else JobStarted
        event = kind(event_id=uuid4(), occurred_at=_now(), actor=ACTOR, job_id=report.job_id,
                     attempt=report.attempt, worker_id=report.worker_id)
        sql = store.ACCEPT if accepted else store.START
        subject = subjects.JOB_ACCEPTED if accepted else subjects.JOB_STARTED
        async with self._pool.acquire() as conn:
            row = await outbox.change(
                conn, sql, report.job_id, report.attempt, report.worker_id, report.at,
                subject=subject, event=event, aggregate_type="job", aggregate_id=report.job_id,
            )
        if row is None:
            log.info("ignored %s report of job %s attempt %d from worker %s (stale or repeated)",
                     report.kind, report.job_id, report.attempt, report.worker_id)
            return False
        if row["cancel_requested_at"] is not None:
            await self._on_cancel_pending(report.job_id, report.attempt, report.worker_id)
        return True

    async def _finish(self, report: StatusReport) -> bool:
        if report.outcome is None:
            raise PermanentError(f"finished report of job {report.job_id} has no outcome")
        async with self._pool.acquire() as conn, conn.transaction():
            if report.outcome is Outcome.CANCELLED:
                state, subject = JobState.CANCELLED, subjects.JOB_CANCELLED
                event: Any = JobCancelled(
                    event_id=uuid4(), occurred_at=_now(), actor=ACTOR, job_id=report.job_id,
                    attempt=report.attempt, reason=report.error or "cancelled by request")
            else:
                state, subject, kind = _TERMINAL[report.outcome]
                event = kind(
                    event_id=uuid4(), occurred_at=_now(), actor=ACTOR, job_id=report.job_id,
                    attempt=report.attempt, state=state, exit_code=report.exit_code,
                    error=report.error, worker_id=report.worker_id,
                    duration_s=report.duration_s)
            row = await outbox.change(
                conn, store.FINISH, report.job_id, report.attempt, report.worker_id,
                state.value, report.exit_code, report.error, report.at,
                subject=subject, event=event, aggregate_type="job", aggregate_id=report.job_id,
            )
            if row is None:
                log.info("ignored finished report of job %s attempt %d (stale or repeated)",
                         report.job_id, report.attempt)
                return False
            freed = await self._release_worker(conn, report.worker_id)
        if freed:
            self._on_worker_ready()
        await self._on_finished(LogEnd(job_id=report.job_id, attempt=report.attempt,
                                       state=state, exit_code=report.exit_code,
                                       error=report.error))
        return True

    async def _release_worker(self, conn: Conn, worker_id: UUID) -> bool:
        """Retire an ephemeral (or used-up) worker, or free a reusable one; True if freed."""
        worker = await store.worker_for_release(conn, worker_id)
        if worker is None:
            return False
        settings = worker["settings"] or {}
        max_jobs = settings.get("max_jobs")
        used_up = max_jobs is not None and worker["jobs_run"] + 1 >= int(max_jobs)
        if WorkerMode(worker["mode"]) is WorkerMode.REUSABLE and not used_up:
            event: Any = WorkerReady(event_id=uuid4(), occurred_at=_now(), actor=ACTOR,
                                     worker_id=worker_id, provider=worker["provider"])
            row = await outbox.change(conn, store.FREE_WORKER, worker_id,
                                      subject=subjects.WORKER_READY, event=event,
                                      aggregate_type="worker", aggregate_id=worker_id)
            return row is not None
        reason = "job finished" if not used_up else f"ran its {max_jobs} jobs"
        event = WorkerTerminating(event_id=uuid4(), occurred_at=_now(), actor=ACTOR,
                                  worker_id=worker_id, provider=worker["provider"],
                                  reason=reason)
        await outbox.change(conn, store.RETIRE_WORKER, worker_id,
                            subject=subjects.WORKER_TERMINATING, event=event,
                            aggregate_type="worker", aggregate_id=worker_id)
        return False
