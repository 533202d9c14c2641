"""What agents report (accepted, started, finished) turned into job and worker transitions.

Every transition is conditional on the report's (job_id, attempt, worker_id), so a report
from an older attempt, or a redelivered one, changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import asyncpg

from hodei_common import outbox, sagas
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
    StaleReportRefused,
)
from hodei_common.contracts.logs import LogEnd
from hodei_common.contracts.workers import WorkerReady, WorkerTerminating
from hodei_common.database import Conn
from hodei_common.errors import PermanentError
from hodei_scheduler import store
from hodei_scheduler.directory import WorkerProviders

log = logging.getLogger(__name__)

ACTOR = "scheduler"

_TERMINAL: dict[Outcome, tuple[JobState, str, type[Any]]] = {
    Outcome.SUCCEEDED: (JobState.SUCCEEDED, subjects.JOB_SUCCEEDED, JobSucceeded),
    Outcome.FAILED: (JobState.FAILED, subjects.JOB_FAILED, JobFailed),
    Outcome.TIMED_OUT: (JobState.TIMED_OUT, subjects.JOB_TIMED_OUT, JobTimedOut),
}


# The job's execution saga ($1: the job), moved in the statement of its report.
STARTED_SAGA = [
    *sagas.step(sagas.EXECUTION, "start", sagas.StepState.COMPLETED, "$1", touch_saga=False),
    *sagas.step(sagas.EXECUTION, "finish", sagas.StepState.RUNNING, "$1"),
]
FINISHED_SAGA = [
    *sagas.step(sagas.EXECUTION, "start", sagas.StepState.COMPLETED, "$1", touch_saga=False),
    *sagas.step(sagas.EXECUTION, "finish", sagas.StepState.COMPLETED, "$1",
                saga_state="COMPLETED"),
]


def _now() -> datetime:
    return datetime.now(UTC)


P = TypeVar("P", JobAccepted, JobStarted)


def _progress(kind: type[P], report: StatusReport) -> P:
    """The JobAccepted or JobStarted event a report stands for."""
    return kind(event_id=uuid4(), occurred_at=_now(), actor=ACTOR, job_id=report.job_id,
                attempt=report.attempt, worker_id=report.worker_id)


class ReportHandler:
    """Applies one status report; ``on_worker_ready`` and ``on_cancel_pending`` are hooks."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        on_worker_ready: Callable[[], None],
        on_cancel_pending: Callable[[UUID, int, UUID], Any],
        on_finished: Callable[[LogEnd], Awaitable[None]],
        providers: WorkerProviders,
        on_stale_worker: Callable[[UUID, str], Awaitable[None]],
    ) -> None:
        self._pool = pool
        self._providers = providers
        self._on_finished = on_finished
        self._on_worker_ready = on_worker_ready
        self._on_cancel_pending = on_cancel_pending
        self._on_stale_worker = on_stale_worker

    async def apply(self, report: StatusReport) -> bool:
        """Apply ``report``; False when it was stale or already applied."""
        if report.kind is StatusKind.FINISHED:
            return await self._finish(report)
        accepted = _progress(JobAccepted, report)
        if report.kind is StatusKind.ACCEPTED:
            steps = [(outbox.FIRST_STEP, store.ACCEPT)]
            emits = [outbox.Emit(accepted, subjects.JOB_ACCEPTED, "job", report.job_id)]
        else:
            # An agent that starts its job at once reports STARTED only: it says both.
            steps = [(outbox.FIRST_STEP, store.START), ("accepted", store.NEWLY_ACCEPTED),
                     *STARTED_SAGA]
            emits = [outbox.Emit(accepted, subjects.JOB_ACCEPTED, "job", report.job_id,
                                 after="accepted"),
                     outbox.Emit(_progress(JobStarted, report), subjects.JOB_STARTED, "job",
                                 report.job_id)]
        async with self._pool.acquire() as conn:
            rows = await outbox.transition(
                conn, steps, [report.job_id, report.attempt, report.worker_id, report.at], emits)
        if not rows:
            await self._refuse(report)
            return False
        if rows[0]["cancel_requested_at"] is not None:
            await self._on_cancel_pending(report.job_id, report.attempt, report.worker_id)
        return True

    async def _finish(self, report: StatusReport) -> bool:
        """End the job and, in the same statement, free or retire its worker."""
        if report.outcome is None:
            raise PermanentError(f"finished report of job {report.job_id} has no outcome")
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
                error=report.error, worker_id=report.worker_id, duration_s=report.duration_s)
        # The steps a job skipped reporting are recorded before its end: it was accepted
        # (even if it could not start), and it started (if it ended before saying so).
        emits = [
            outbox.Emit(_progress(JobAccepted, report), subjects.JOB_ACCEPTED, "job",
                        report.job_id, after="accepted"),
            outbox.Emit(_progress(JobStarted, report), subjects.JOB_STARTED, "job",
                        report.job_id, after="started"),
            outbox.Emit(event, subject, "job", report.job_id),
        ]
        steps = [(outbox.FIRST_STEP, store.FINISH), ("accepted", store.NEWLY_ACCEPTED),
                 ("started", store.NEWLY_STARTED), *FINISHED_SAGA]
        args: list[Any] = [report.job_id, report.attempt, report.worker_id, state.value,
                           report.exit_code, report.error, report.at, report.started_at]
        async with self._pool.acquire() as conn:
            provider = await self._providers.provider(conn, report.worker_id)
            if provider is not None:  # the worker leaves its job in the same statement
                steps += [("freed", store.FREE_WORKER), ("retired", store.RETIRE_WORKER)]
                args.append(report.leaving)
                emits += [
                    outbox.Emit(WorkerReady(event_id=uuid4(), occurred_at=_now(), actor=ACTOR,
                                            worker_id=report.worker_id, provider=provider),
                                subjects.WORKER_READY, "worker", report.worker_id,
                                after="freed"),
                    outbox.Emit(WorkerTerminating(
                        event_id=uuid4(), occurred_at=_now(), actor=ACTOR,
                        worker_id=report.worker_id, provider=provider,
                        reason=report.leaving or "its job finished"),
                        subjects.WORKER_TERMINATING, "worker", report.worker_id,
                        after="retired"),
                ]
            rows = await outbox.transition(conn, steps, args, emits)
        if not rows:
            await self._refuse(report)
            return False
        if provider is not None and rows[0]["step_rows"][[n for n, _ in steps].index("freed")]:
            self._on_worker_ready()
        await self._on_finished(LogEnd(job_id=report.job_id, attempt=report.attempt,
                                       state=state, exit_code=report.exit_code,
                                       error=report.error, lines=report.log_lines))
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
            await self._on_stale_worker(report.worker_id, "this worker is "
                                        f"{now['reporter_state']} to the platform")

    async def _record_stale(self, conn: Conn, report: StatusReport, current: int) -> None:
        event_id = uuid5(NAMESPACE_URL, f"hodei:stale:{report.job_id}:{report.attempt}:"
                                        f"{report.kind}:{report.worker_id}")
        event = StaleReportRefused(
            event_id=event_id, occurred_at=_now(), actor=ACTOR, job_id=report.job_id,
            attempt=report.attempt, worker_id=report.worker_id, kind=report.kind.value,
            current_attempt=current)
        await outbox.change(conn, store.STALE_ONCE, report.job_id, event_id,
                            subject=subjects.JOB_STALE_REPORT, event=event,
                            aggregate_type="job", aggregate_id=report.job_id)
        log.warning("refused a %s report of job %s attempt %d from worker %s: the job is at "
                    "attempt %d", report.kind, report.job_id, report.attempt, report.worker_id,
                    current)
