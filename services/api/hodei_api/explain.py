"""``jobs.explain``: the first thing an operator asks of a stuck job, answered in a few lines:
where it is, what it waits for, its worker's last sign of life, what last went wrong."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from hodei_api import store
from hodei_common.contracts.api import JobExplanation, JobRef
from hodei_common.contracts.jobs import Job, JobState
from hodei_common.contracts.workers import WorkerState
from hodei_common.database import Conn
from hodei_common.errors import NotFoundError

# The job's worker: the one holding it, else one being made for it, else the last that held
# it (from its newest JobAssigned).
_WORKER = """
SELECT w.id, w.state, w.provider,
       extract(epoch FROM now() - w.last_heartbeat)::float8 AS heartbeat_age_s,
       extract(epoch FROM now() - w.created_at)::float8 AS age_s
FROM workers w
WHERE w.id = $2
   OR (w.for_job_id = $1 AND w.state IN ('CREATING', 'READY'))
   OR w.id = (SELECT (payload->>'worker_id')::uuid FROM domain_events
              WHERE aggregate_id = $1 AND event_type = 'JobAssigned' ORDER BY seq DESC LIMIT 1)
ORDER BY w.id = $2 DESC, w.state IN ('CREATING', 'READY') DESC, w.created_at DESC
LIMIT 1
"""
# The newest failed (or erring) saga step of the job or of any worker made for or given it;
# of steps moved together, a FAILED one.
_LAST_FAILURE = """
SELECT g.saga_type, s.step_name, s.error, s.retry_count,
       extract(epoch FROM now() - s.updated_at)::float8 AS age_s
FROM sagas g JOIN saga_steps s ON s.saga_id = g.id
WHERE (s.state = 'FAILED' OR s.error IS NOT NULL)
  AND (g.aggregate_id = $1
       OR g.aggregate_id IN (SELECT id FROM workers WHERE for_job_id = $1)
       OR g.aggregate_id IN (SELECT (payload->>'worker_id')::uuid FROM domain_events
                             WHERE aggregate_id = $1 AND event_type = 'JobAssigned'))
ORDER BY s.updated_at DESC, s.state = 'FAILED' DESC
LIMIT 1
"""
_PROVIDER = """
SELECT p.enabled, p.max_workers,
       (SELECT count(*) FROM workers w WHERE w.provider = p.name
          AND w.state IN ('CREATING', 'READY', 'BUSY', 'TERMINATING'))::int AS active,
       (SELECT count(*) FROM jobs q WHERE q.provider = p.name AND q.state = 'QUEUED'
          AND (q.priority > $2 OR (q.priority = $2 AND q.queued_at < $3)))::int AS ahead
FROM provider_configs p WHERE p.name = $1
"""
_TIMING = """
SELECT extract(epoch FROM not_before - now())::float8 AS backoff_left_s,
       extract(epoch FROM now() - coalesce(assigned_at, now()))::float8 AS assigned_s,
       extract(epoch FROM now() - coalesce(started_at, now()))::float8 AS running_s,
       priority, queued_at
FROM jobs WHERE id = $1
"""


def _seconds(value: float) -> str:
    return f"{value:.1f}s"


async def _waiting_for(conn: Conn, job: Job, worker: asyncpg.Record | None) -> str:
    """What the job waits for, in words."""
    if job.state.terminal:
        end = f" (exit code {job.exit_code})" if job.exit_code is not None else ""
        return f"nothing: it ended {job.state}{end}"
    timing = await conn.fetchrow(_TIMING, job.id)
    assert timing is not None
    if job.state is JobState.RUNNING:
        cancel = "; a cancel was asked for" if job.cancel_requested_at else ""
        return (f"its command to finish (running for {_seconds(timing['running_s'])} "
                f"of its {job.timeout_s:g}s timeout){cancel}")
    if job.state is JobState.ASSIGNED:
        return (f"worker {job.worker_id} to take it (assigned "
                f"{_seconds(timing['assigned_s'])} ago)")
    parts = []
    if timing["backoff_left_s"] is not None and timing["backoff_left_s"] > 0:
        parts.append(f"its retry backoff to end (in {_seconds(timing['backoff_left_s'])}, "
                     f"attempt {job.attempt} of {job.max_attempts})")
    if worker is not None and worker["state"] in (WorkerState.CREATING, WorkerState.READY):
        verb = "to register" if worker["state"] == WorkerState.CREATING else "to be paired"
        parts.append(f"worker {worker['id']} {verb} (made {_seconds(worker['age_s'])} ago)")
    else:
        p = await conn.fetchrow(_PROVIDER, job.provider, timing["priority"], timing["queued_at"])
        if p is None or not p["enabled"]:
            parts.append(f"provider {job.provider!r} to be enabled")
        elif p["active"] >= p["max_workers"]:
            parts.append(f"a free worker: provider {job.provider!r} has {p['active']} of "
                         f"{p['max_workers']} workers, {p['ahead']} queued job(s) ahead")
        else:
            parts.append("the scheduler to request a worker")
    return "; then ".join(parts)


async def explain_job(pool: asyncpg.Pool, req: JobRef) -> JobExplanation:
    """Where the job is and why it waits."""
    async with pool.acquire() as conn:
        job = await store.get_job(conn, req.id)
        if job is None:
            raise NotFoundError(f"job {req.id} not found")
        worker = await conn.fetchrow(_WORKER, job.id, job.worker_id)
        failure = await conn.fetchrow(_LAST_FAILURE, job.id)
        waiting = await _waiting_for(conn, job, worker)
    return JobExplanation(
        job=job, waiting_for=waiting,
        worker_id=_id(worker), worker_state=WorkerState(worker["state"]) if worker else None,
        heartbeat_age_s=worker["heartbeat_age_s"] if worker else None,
        last_failure=(f"{failure['saga_type']}/{failure['step_name']}: {failure['error']}"
                      if failure else None),
        last_failure_age_s=failure["age_s"] if failure else None,
        retries=failure["retry_count"] if failure else 0,
    )


def _id(row: asyncpg.Record | None) -> UUID | None:
    return None if row is None else UUID(str(row["id"]))

