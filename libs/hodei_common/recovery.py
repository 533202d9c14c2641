"""Losing a worker: it becomes FAILED and the job it held is requeued, cancelled, failed or
timed out, all in ONE conditional statement with its events.

Three services find lost workers: the supervisor (heartbeats gone silent, an assignment
never taken, a job past its timeout, a worker that never registered), the provisioner (an
agent process it reaped, a container that died). All of them go through :class:`Recovery`,
so a worker is lost the same way whoever sees it first, and a second finder (or a
redelivered event) matches no row and changes nothing.

Before it acts on a worker that held a job, it looks at the worker's last status report in
JetStream: a ``finished`` report for the job's attempt that the scheduler has not applied yet
(the scheduler is down, or slow) means the job did run to its end, so the worker is left to
that report. Requeuing it would run the job twice.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from hodei_common import outbox, sagas, tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Control, ControlAction, StatusKind, StatusReport
from hodei_common.contracts.jobs import (
    JobCancelled,
    JobFailed,
    JobRequeued,
    JobState,
    JobTimedOut,
)
from hodei_common.contracts.workers import WorkerFailed
from hodei_common.database import Conn
from hodei_common.settings import DEFAULT_BACKOFF_BASE_S, DEFAULT_BACKOFF_MAX_S, Settings

log = logging.getLogger(__name__)

WORKER_LOST = "worker lost"


class Fate(enum.StrEnum):
    """What becomes of the job a lost worker held (a cancel asked for wins: CANCELLED)."""

    REQUEUE = "requeue"  # QUEUED again as attempt + 1, or FAILED once attempts are used up
    FAIL = "fail"  # FAILED with the given error (the job's own fault: it ran out of memory)
    TIME_OUT = "time_out"  # TIMED_OUT: it ran past its timeout and no result came


@dataclass(frozen=True)
class Backoff:
    """Delay before a requeued job may run again: ``base * 2^(n-1)`` after its n-th failed
    attempt, at most ``max_s``."""

    base_s: float = DEFAULT_BACKOFF_BASE_S
    max_s: float = DEFAULT_BACKOFF_MAX_S

    @classmethod
    def from_settings(cls, settings: Settings) -> Backoff:
        return cls(settings.requeue_backoff_s, settings.requeue_backoff_max_s)

    def delay_s(self, failed_attempt: int) -> float:
        return float(min(self.base_s * 2 ** max(failed_attempt - 1, 0), self.max_s))


@dataclass(frozen=True)
class HeldJob:
    """The unfinished job a worker holds."""

    id: UUID
    attempt: int
    max_attempts: int
    cancel_requested: bool
    accepted: bool


@dataclass(frozen=True)
class LiveWorker:
    """A worker that still counts as alive, and its job."""

    id: UUID
    provider: str
    state: str
    job: HeldJob | None


_WORKER_AND_JOB = """
SELECT w.id, w.provider, w.state, j.id AS job_id, j.attempt, j.max_attempts,
       j.cancel_requested_at IS NOT NULL AS cancel_requested, j.accepted_at IS NOT NULL AS accepted
FROM workers w
LEFT JOIN jobs j ON j.worker_id = w.id AND j.state IN ('ASSIGNED', 'RUNNING')
WHERE w.id = $1 AND w.state IN ('CREATING', 'READY', 'BUSY')
"""

# $1 worker, $2 its error, $3 job (NULL: none), $4 the job's attempt, $5 the job's error,
# $6 backoff seconds, $7 the fate. The job steps exclude each other; each is fenced by
# (job, attempt, worker) and applies only when the worker step did.
LOSE_WORKER = """
UPDATE workers SET state = 'FAILED', error = $2, current_job_id = NULL, idle_since = NULL
WHERE id = $1 AND state IN ('CREATING', 'READY', 'BUSY')
RETURNING id
"""
_HELD = """
WHERE id = $3 AND attempt = $4 AND worker_id = $1 AND state IN ('ASSIGNED', 'RUNNING')
  AND EXISTS (SELECT 1 FROM state)"""
REQUEUE_JOB = f"""
UPDATE jobs SET state = 'QUEUED', attempt = attempt + 1, worker_id = NULL, assigned_at = NULL,
                accepted_at = NULL, started_at = NULL, exit_code = NULL, error = $5,
                not_before = now() + make_interval(secs => $6)
{_HELD} AND cancel_requested_at IS NULL AND $7 = 'requeue' AND attempt < max_attempts
RETURNING id
"""
CANCEL_JOB = f"""
UPDATE jobs SET state = 'CANCELLED', error = $5, completed_at = now()
{_HELD} AND cancel_requested_at IS NOT NULL
RETURNING id
"""
FAIL_JOB = f"""
UPDATE jobs SET state = 'FAILED', error = $5, completed_at = now(),
                started_at = coalesce(started_at, now())
{_HELD} AND cancel_requested_at IS NULL
  AND ($7 = 'fail' OR ($7 = 'requeue' AND attempt >= max_attempts))
RETURNING id
"""
TIME_OUT_JOB = f"""
UPDATE jobs SET state = 'TIMED_OUT', error = $5, completed_at = now()
{_HELD} AND cancel_requested_at IS NULL AND $7 = 'time_out'
RETURNING id
"""
# Recorded with the loss ($1 the worker, $2 why): the recovery saga, its first two steps
# done by this very statement; and for a worker lost while CREATING, its provisioning saga
# ends compensated by it.
_RECOVERY_SAGA = sagas.start(sagas.RECOVERY, sagas.RECOVERY_STEPS, "$1", done=2, error="$2")
_PROVISIONING_FAILED = sagas.step(sagas.PROVISIONING, "await_registration",
                                  sagas.StepState.FAILED, "$1", error="$2",
                                  saga_state="COMPENSATED")
_JOB_STEPS = [("requeued", REQUEUE_JOB), ("cancelled", CANCEL_JOB), ("failed", FAIL_JOB),
              ("timed_out", TIME_OUT_JOB)]
# After the job steps: the job's execution saga fails the step under way with the job's
# error ($5), and ends COMPENSATED when the job was requeued, FAILED otherwise.
_EXECUTION_SAGA = [
    ("execution_lost", f"""
UPDATE saga_steps AS s SET state = 'FAILED', error = $5, completed_at = now()
FROM sagas AS g
WHERE g.id = s.saga_id AND g.saga_type = '{sagas.EXECUTION}' AND g.aggregate_id = $3
  AND g.state = 'RUNNING' AND s.state IN ('PENDING', 'RUNNING')
  AND s.position = (SELECT min(x.position) FROM saga_steps x
                    WHERE x.saga_id = g.id AND x.state IN ('PENDING', 'RUNNING'))
  AND EXISTS (SELECT 1 FROM state)
RETURNING s.saga_id, s.step_name"""),
    ("execution_lost_saga", """
UPDATE sagas AS g SET current_step = l.step_name, error = $5, completed_at = now(),
    state = CASE WHEN EXISTS (SELECT 1 FROM requeued) THEN 'COMPENSATED' ELSE 'FAILED' END
FROM execution_lost AS l
WHERE g.id = l.saga_id
RETURNING g.id"""),
]


async def live_worker(conn: Conn, worker_id: UUID) -> LiveWorker | None:
    """The worker and its job, or None when it is not CREATING/READY/BUSY."""
    row = await conn.fetchrow(_WORKER_AND_JOB, worker_id)
    if row is None:
        return None
    job = None if row["job_id"] is None else HeldJob(
        id=row["job_id"], attempt=row["attempt"], max_attempts=row["max_attempts"],
        cancel_requested=row["cancel_requested"], accepted=row["accepted"])
    return LiveWorker(id=row["id"], provider=row["provider"], state=row["state"], job=job)


async def last_report(nc: NATS, worker_id: UUID) -> StatusReport | None:
    """The worker's newest status report in JetStream (applied or not), if any."""
    try:
        msg = await nc.jetstream().get_last_msg(subjects.WORKER_STATUS_STREAM,
                                                subjects.worker_status(worker_id))
    except NotFoundError:
        return None
    try:
        return msgspec.json.decode(msg.data or b"", type=StatusReport)
    except msgspec.DecodeError:
        return None


async def send_stop(nc: NATS, worker_id: UUID, reason: str) -> None:
    """Tell a worker's agent to stop (core NATS, best effort: it is said again if it beats)."""
    await _order(nc, worker_id, Control(action=ControlAction.STOP, reason=reason))


async def send_cancel(nc: NATS, job_id: UUID, attempt: int, worker_id: UUID) -> None:
    """Tell a worker to kill its job (core NATS: said again until the job ends)."""
    await _order(nc, worker_id, Control(action=ControlAction.CANCEL, job_id=job_id,
                                        attempt=attempt, reason="cancelled by request"))


async def _order(nc: NATS, worker_id: UUID, order: Control) -> None:
    try:
        await nc.publish(subjects.worker_control(worker_id), msgspec.json.encode(order),
                         headers=tracing.inject())
    except (NatsError, OSError) as e:
        log.warning("worker %s: could not send a %s order (%s)", worker_id, order.action, e)


class Recovery:
    """Declares workers lost and settles their jobs; shared by supervisor and provisioner."""

    def __init__(self, pool: asyncpg.Pool, nc: NATS, *, actor: str,
                 backoff: Backoff | None = None) -> None:
        self._pool = pool
        self._nc = nc
        self._actor = actor
        self.backoff = backoff or Backoff()

    async def lose(
        self,
        worker_id: UUID,
        reason: str,
        *,
        fate: Fate = Fate.REQUEUE,
        job_error: str | None = None,
        leave_if_reported: Sequence[StatusKind] = (StatusKind.FINISHED,),
        first: Sequence[Any] = (),
        expected_job: tuple[UUID, int] | None = None,
        spare_busy: bool = False,
    ) -> str | None:
        """Declare the worker FAILED with ``reason`` and settle its job; return what became
        of it (``requeued``, ``cancelled``, ``failed``, ``timed_out``, ``none`` for a worker
        without a job), or None when nothing changed.

        Nothing changes when the worker is no longer live, when it holds another job than
        ``expected_job`` (the finder looked at an older state), or when its last report is
        one of ``leave_if_reported`` for its job's attempt (the scheduler will apply it).
        ``first``: worker events to record before ``WorkerFailed`` (``WorkerHeartbeatMissed``).
        ``spare_busy``: leave a BUSY worker alone (an agent that exited 0 reported its job).
        """
        async with self._pool.acquire() as conn:
            worker = await live_worker(conn, worker_id)
        if worker is None or (spare_busy and worker.state == "BUSY"):
            return None
        job = worker.job
        if expected_job is not None and (job is None or (job.id, job.attempt) != expected_job):
            return None
        if job is not None and leave_if_reported:
            report = await last_report(self._nc, worker_id)
            if (report is not None and (report.job_id, report.attempt) == (job.id, job.attempt)
                    and report.kind in leave_if_reported):
                log.info("worker %s: its %s report of job %s is not applied yet; left to it",
                         worker_id, report.kind, job.id)
                return None
        outcome = await self._apply(worker, reason, fate, job_error, first)
        if outcome is not None:
            await send_stop(self._nc, worker_id, f"declared lost: {reason}")
            log.warning("worker %s lost (%s)%s", worker_id, reason,
                        f"; job {job.id} attempt {job.attempt} {outcome}" if job else "")
        return outcome

    async def _apply(self, worker: LiveWorker, reason: str, fate: Fate,
                     job_error: str | None, first: Sequence[Any]) -> str | None:
        now = datetime.now(UTC)
        job = worker.job
        meta: dict[str, Any] = {"occurred_at": now, "actor": self._actor,
                                "correlation_id": tracing.correlation_id()}
        emits = [outbox.Emit(e, subject, "worker", worker.id) for e, subject in first]
        emits.append(outbox.Emit(
            WorkerFailed(event_id=uuid4(), **meta, worker_id=worker.id, provider=worker.provider,
                         error=reason, job_id=job.id if job else None),
            subjects.WORKER_FAILED, "worker", worker.id))
        steps: list[tuple[str, str]] = [(outbox.FIRST_STEP, LOSE_WORKER), *_RECOVERY_SAGA]
        if worker.state == "CREATING":
            steps += _PROVISIONING_FAILED
        error = job_error or f"{WORKER_LOST}: {reason}"
        delay = 0.0
        if job is not None:
            steps += [*_JOB_STEPS, *_EXECUTION_SAGA]
            delay = self.backoff.delay_s(job.attempt)
            common: dict[str, Any] = {"job_id": job.id, "attempt": job.attempt, **meta}
            final: dict[str, Any] = {**common, "error": error, "worker_id": worker.id}
            emits += [
                outbox.Emit(JobRequeued(event_id=uuid4(), **{**common,
                                                             "attempt": job.attempt + 1},
                                        previous_worker_id=worker.id, reason=error,
                                        backoff_s=delay,
                                        not_before=now + timedelta(seconds=delay)),
                            subjects.JOB_REQUEUED, "job", job.id, after="requeued"),
                outbox.Emit(JobCancelled(event_id=uuid4(), **common,
                                         reason=f"cancelled by request; {error}"),
                            subjects.JOB_CANCELLED, "job", job.id, after="cancelled"),
                outbox.Emit(JobFailed(event_id=uuid4(), **final, state=JobState.FAILED),
                            subjects.JOB_FAILED, "job", job.id, after="failed"),
                outbox.Emit(JobTimedOut(event_id=uuid4(), **final, state=JobState.TIMED_OUT),
                            subjects.JOB_TIMED_OUT, "job", job.id, after="timed_out"),
            ]
        args: list[Any] = [worker.id, reason]
        if job is not None:
            args += [job.id, job.attempt, error, delay, fate.value]
        async with self._pool.acquire() as conn:
            rows = await outbox.transition(conn, steps, args, emits)
        if not rows:
            return None
        if job is None:
            return "none"
        at = [name for name, _ in steps].index(_JOB_STEPS[0][0])
        counts = rows[0]["step_rows"][at:at + len(_JOB_STEPS)]
        for (name, _), n in zip(_JOB_STEPS, counts, strict=True):
            if n:
                return name
        return "none"  # the job ended meanwhile: only the worker was lost
