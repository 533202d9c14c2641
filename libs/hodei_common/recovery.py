"""Losing a worker: it becomes FAILED and the job it held is requeued, cancelled, failed or
timed out, in ONE conditional statement with its events (:func:`lifecycle.workers.lose`).

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

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from hodei_common import tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Control, ControlAction, StatusKind, StatusReport
from hodei_common.contracts.jobs import JobState
from hodei_common.lifecycle import workers
from hodei_common.lifecycle.workers import Fate, Silence
from hodei_common.metrics import Metrics
from hodei_common.settings import DEFAULT_BACKOFF_BASE_S, DEFAULT_BACKOFF_MAX_S, Settings

__all__ = ["Backoff", "Fate", "Recovery", "Silence", "last_report", "send_cancel", "send_stop"]

log = logging.getLogger(__name__)
# How often a finder looks again when the worker or its job moved while it decided.
_TRIES = 3
# The ``reason`` label of hodei_workers_lost_total when the provider saw the resource end.
LOST_BY_PROVIDER = "provider"
# The job's terminal state, by what losing its worker made of it (a requeue ends nothing).
_ENDED = {"fail": JobState.FAILED, "cancel": JobState.CANCELLED,
          "time_out": JobState.TIMED_OUT}


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
                 backoff: Backoff | None = None, metrics: Metrics | None = None) -> None:
        self._pool = pool
        self._nc = nc
        self._actor = actor
        self.backoff = backoff or Backoff()
        self._metrics = metrics or Metrics()

    async def lose(
        self,
        worker_id: UUID,
        reason: str,
        *,
        fate: Fate = Fate.REQUEUE,
        job_error: str | None = None,
        leave_if_reported: Sequence[StatusKind] = (StatusKind.FINISHED,),
        silence: Silence | None = None,
        expected_job: tuple[UUID, int] | None = None,
        spare_busy: bool = False,
        cause: str = LOST_BY_PROVIDER,
    ) -> str | None:
        """Declare the worker FAILED with ``reason`` and settle its job; return what became
        of it (``requeue``, ``cancel``, ``fail``, ``time_out``, ``none`` for a worker
        without a job), or None when nothing changed.

        Nothing changes when the worker is no longer live, when it holds another job than
        ``expected_job`` (the finder looked at an older state), or when its last report is
        one of ``leave_if_reported`` for its job's attempt (the scheduler will apply it).
        ``silence``: it was lost to silence (``WorkerHeartbeatMissed`` is recorded first).
        ``spare_busy``: leave a BUSY worker alone (an agent that exited 0 reported its job).
        ``cause``: the ``reason`` label it is counted under (one of a few words; ``reason``
        itself holds numbers).
        """
        for _ in range(_TRIES):
            async with self._pool.acquire() as conn:
                worker = await workers.live_worker(conn, worker_id)
            if worker is None or (spare_busy and worker.state == "BUSY"):
                return None
            job = worker.job
            if expected_job is not None and (job is None
                                             or (job.id, job.attempt) != expected_job):
                return None
            if job is not None and leave_if_reported:
                report = await last_report(self._nc, worker_id)
                if (report is not None
                        and (report.job_id, report.attempt) == (job.id, job.attempt)
                        and report.kind in leave_if_reported):
                    log.info("worker %s: its %s report of job %s is not applied yet; left to "
                             "it", worker_id, report.kind, job.id)
                    return None
            with _in_trace(job, worker_id, reason):
                async with self._pool.acquire() as conn:
                    outcome = await workers.lose(
                        conn, worker, reason, fate=fate, job_error=job_error,
                        backoff_s=self.backoff.delay_s(job.attempt) if job else 0.0,
                        silence=silence, actor=self._actor)
                if outcome is None:
                    continue  # it moved meanwhile: look again
                await send_stop(self._nc, worker_id, f"declared lost: {reason}")
            self._count(worker, outcome, cause)
            log.warning("worker %s lost (%s)%s", worker_id, reason,
                        f"; job {job.id} attempt {job.attempt}: {outcome}" if job else "")
            return outcome
        return None

    def _count(self, worker: workers.LiveWorker, outcome: str, cause: str) -> None:
        self._metrics.workers_lost.labels(cause).inc()
        if (ended := _ENDED.get(outcome)) is not None:
            self._metrics.jobs_finished.labels(worker.ref.provider, ended).inc()


def _in_trace(job: workers.HeldJob | None, worker_id: UUID, reason: str
              ) -> contextlib.AbstractContextManager[object]:
    """The recovery of a busy worker as a span of its job's trace (the reason says what was
    seen: no secret); nothing for an idle worker's."""
    if job is None:
        return contextlib.nullcontext()
    return tracing.job_span("recovery lose worker", job.traceparent, job.id,
                            attempt=job.attempt, worker_id=worker_id,
                            attributes={"hodei.reason": reason})
