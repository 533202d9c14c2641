"""``jobs.explain``: the first thing an operator asks of a stuck job, answered in a few lines:
where it is, what it waits for, its worker's last sign of life, what last went wrong."""

from __future__ import annotations

import asyncpg

from hodei_api import store
from hodei_api.handlers import job_not_found
from hodei_common.contracts.api import JobExplanation, JobRef
from hodei_common.contracts.jobs import Job, JobState
from hodei_common.contracts.workers import WorkerState
from hodei_common.database import Conn


def _seconds(value: float) -> str:
    return f"{value:.1f}s"


def _status(worker: store.ExplainedWorker) -> str:
    """``; <its resource's last status>, 1.1s ago``, or nothing when its provider said none."""
    if worker.status is None:
        return ""
    age = f", {_seconds(worker.status_age_s)} ago" if worker.status_age_s is not None else ""
    return f"; {worker.status}{age}"


async def _waiting_for(conn: Conn, job: Job, worker: store.ExplainedWorker | None) -> str:
    """What the job waits for, in words."""
    if job.state.terminal:
        end = f" (exit code {job.exit_code})" if job.exit_code is not None else ""
        return f"nothing: it ended {job.state}{end}"
    timing = await store.job_timing(conn, job.id)
    assert timing is not None
    if job.state is JobState.RUNNING:
        cancel = "; a cancel was asked for" if job.cancel_requested_at else ""
        return (f"its command to finish (running for {_seconds(timing.running_s)} "
                f"of its {job.timeout_s:g}s timeout){cancel}")
    if job.state is JobState.ASSIGNED:
        status = _status(worker) if worker is not None and worker.id == job.worker_id else ""
        return (f"worker {job.worker_id} to take it (assigned "
                f"{_seconds(timing.assigned_s)} ago{status})")
    parts = []
    if timing.backoff_left_s is not None and timing.backoff_left_s > 0:
        parts.append(f"its retry backoff to end (in {_seconds(timing.backoff_left_s)}, "
                     f"attempt {job.attempt} of {job.max_attempts})")
    if worker is not None and worker.state in (WorkerState.CREATING, WorkerState.READY):
        verb = "to register" if worker.state is WorkerState.CREATING else "to be paired"
        parts.append(f"worker {worker.id} {verb} (made {_seconds(worker.age_s)} ago"
                     f"{_status(worker)})")
    else:
        p = await store.provider_room(conn, job.provider, timing.priority, timing.queued_at)
        if p is None or not p.enabled:
            parts.append(f"provider {job.provider!r} to be enabled")
        elif p.active >= p.max_workers:
            parts.append(f"a free worker: provider {job.provider!r} has {p.active} of "
                         f"{p.max_workers} workers, {p.ahead} queued job(s) ahead")
        else:
            parts.append("the scheduler to request a worker")
    return "; then ".join(parts)


async def explain_job(pool: asyncpg.Pool, namespace: str, req: JobRef) -> JobExplanation:
    """Where a job of ``namespace`` is and why it waits."""
    async with pool.acquire() as conn:
        job = await store.get_job(conn, namespace, req.id)
        if job is None:
            raise job_not_found(req.id)
        worker = await store.explained_worker(conn, job.id, job.worker_id)
        failure = await store.last_failure(conn, job.id)
        waiting = await _waiting_for(conn, job, worker)
    return JobExplanation(
        job=job, waiting_for=waiting,
        worker_id=worker.id if worker else None,
        worker_state=worker.state if worker else None,
        heartbeat_age_s=worker.heartbeat_age_s if worker else None,
        worker_resource=worker.resource if worker else None,
        worker_status=worker.status if worker else None,
        worker_status_age_s=worker.status_age_s if worker else None,
        last_failure=(f"{failure.saga_type}/{failure.step_name}: {failure.error}"
                      if failure else None),
        last_failure_age_s=failure.age_s if failure else None,
        retries=failure.retry_count if failure else 0,
    )
