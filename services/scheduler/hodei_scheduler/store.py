"""SQL of the scheduler: the dispatch queries and the job/worker transitions agents drive."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from hodei_common.database import Conn

# Whether READY worker ``w`` may take job ``j``: same provider, made with the job's limits
# (NULL: the provider's defaults), and not requested for another job that still waits.
_FITS = """
    w.state = 'READY' AND w.provider = j.provider
    AND w.cpus IS NOT DISTINCT FROM j.cpus AND w.memory_bytes IS NOT DISTINCT FROM j.memory_bytes
    AND (w.for_job_id IS NULL OR w.for_job_id = j.id
         OR NOT EXISTS (SELECT 1 FROM jobs q WHERE q.id = w.for_job_id AND q.state = 'QUEUED'))
"""
# The best job that has a READY worker that fits, and the worker requested for it, else the
# longest-idle one.
PICK_PAIR = f"""
WITH j AS (
    SELECT id, provider, attempt, cpus, memory_bytes FROM jobs j
    WHERE state = 'QUEUED' AND EXISTS (SELECT 1 FROM workers w WHERE {_FITS})
    ORDER BY priority DESC, queued_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
SELECT j.id AS job_id, j.attempt, w.id AS worker_id
FROM j, LATERAL (
    SELECT w.id FROM workers w
    WHERE {_FITS}
    ORDER BY w.for_job_id IS NOT DISTINCT FROM j.id DESC, w.idle_since NULLS FIRST, w.id
    LIMIT 1
    FOR UPDATE OF w SKIP LOCKED
) AS w
"""

ASSIGN_JOB = """
UPDATE jobs SET state = 'ASSIGNED', worker_id = $2, assigned_at = now()
WHERE id = $1 AND state = 'QUEUED' AND attempt = $3
RETURNING id, attempt, command, args, env, timeout_s, assigned_at
"""

OCCUPY_WORKER = """
UPDATE workers SET state = 'BUSY', current_job_id = $2, idle_since = NULL
WHERE id = $1 AND state = 'READY'
"""

# Demand per enabled provider and per class of limits (a worker serves only jobs of its
# class); the class of NULL limits also holds the warm pool. Oldest waiting class first.
PROVIDER_DEMAND = """
WITH p AS (
    SELECT p.name, p.worker_mode, p.max_workers, p.min_idle,
           (SELECT count(*) FROM workers w WHERE w.provider = p.name
              AND w.state IN ('CREATING', 'READY', 'BUSY', 'TERMINATING')) AS active
    FROM provider_configs p WHERE p.enabled
), c AS (
    SELECT provider, cpus, memory_bytes, count(*) AS queued, 0 AS creating, 0 AS ready,
           min(queued_at) AS oldest
    FROM jobs WHERE state = 'QUEUED' GROUP BY 1, 2, 3
    UNION ALL
    SELECT provider, cpus, memory_bytes, 0, count(*) FILTER (WHERE state = 'CREATING'),
           count(*) FILTER (WHERE state = 'READY'), NULL
    FROM workers WHERE state IN ('CREATING', 'READY') GROUP BY 1, 2, 3
    UNION ALL
    SELECT name, NULL, NULL, 0, 0, 0, NULL FROM p
)
SELECT p.name, p.worker_mode, p.max_workers, p.min_idle, p.active, c.cpus, c.memory_bytes,
       sum(c.queued)::int AS queued, sum(c.creating)::int AS creating,
       sum(c.ready)::int AS ready, min(c.oldest) AS oldest
FROM p JOIN c ON c.provider = p.name
GROUP BY p.name, p.worker_mode, p.max_workers, p.min_idle, p.active, c.cpus, c.memory_bytes
ORDER BY p.name, min(c.oldest) NULLS LAST
"""

# READY workers idle past their provider's idle_ttl_s, beyond the min_idle freshest ones.
IDLE_SURPLUS = """
SELECT id, provider, ttl FROM (
    SELECT w.id, w.provider, w.idle_since, p.min_idle,
           (p.settings->>'idle_ttl_s')::float8 AS ttl,
           row_number() OVER (PARTITION BY w.provider ORDER BY w.idle_since DESC, w.id)
               AS freshness
    FROM workers w JOIN provider_configs p ON p.name = w.provider
    WHERE w.state = 'READY' AND p.settings ? 'idle_ttl_s'
) AS ready
WHERE freshness > min_idle AND idle_since < now() - make_interval(secs => ttl)
ORDER BY idle_since
LIMIT 100
"""

RETIRE_IDLE = """
UPDATE workers SET state = 'TERMINATING' WHERE id = $1 AND state = 'READY'
RETURNING id
"""

INSERT_WORKER = """
INSERT INTO workers (id, provider, mode, state, cpus, memory_bytes, for_job_id)
VALUES ($1, $2, $3, 'CREATING', $4, $5, $6)
RETURNING id
"""

# Waiting jobs of a class that no live worker was requested for yet, best first.
_UNSERVED_JOBS = """
SELECT id FROM jobs j
WHERE state = 'QUEUED' AND provider = $1
  AND cpus IS NOT DISTINCT FROM $2 AND memory_bytes IS NOT DISTINCT FROM $3
  AND NOT EXISTS (SELECT 1 FROM workers w
                  WHERE w.for_job_id = j.id AND w.state IN ('CREATING', 'READY'))
ORDER BY priority DESC, queued_at, id
LIMIT $4
"""

UNANSWERED_ASSIGNMENTS = """
SELECT id, attempt, worker_id, command, args, env, timeout_s, assigned_at FROM jobs
WHERE state = 'ASSIGNED' AND accepted_at IS NULL
  AND assigned_at < now() - make_interval(secs => $1)
ORDER BY assigned_at
LIMIT 100
"""

ACCEPT = """
UPDATE jobs SET accepted_at = $4
WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND state = 'ASSIGNED'
  AND accepted_at IS NULL
RETURNING id, cancel_requested_at
"""

START = """
UPDATE jobs SET state = 'RUNNING', started_at = $4, accepted_at = coalesce(accepted_at, $4)
WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND state = 'ASSIGNED'
RETURNING id, cancel_requested_at
"""

FINISH = """
UPDATE jobs SET state = $4, exit_code = $5, error = $6, completed_at = $7,
                started_at = coalesce(started_at, $7), accepted_at = coalesce(accepted_at, $7)
WHERE id = $1 AND attempt = $2 AND worker_id = $3 AND state IN ('ASSIGNED', 'RUNNING')
RETURNING id
"""

RETIRE_WORKER = """
UPDATE workers SET state = 'TERMINATING', current_job_id = NULL, jobs_run = jobs_run + 1
WHERE id = $1 AND state = 'BUSY'
RETURNING provider
"""

FREE_WORKER = """
UPDATE workers SET state = 'READY', current_job_id = NULL, jobs_run = jobs_run + 1,
                   idle_since = now()
WHERE id = $1 AND state = 'BUSY'
RETURNING provider
"""

WORKER_FOR_RELEASE = """
SELECT w.mode, w.jobs_run, w.provider, p.settings
FROM workers w JOIN provider_configs p ON p.name = w.provider
WHERE w.id = $1
"""

JOB_CANCEL_TARGET = """
SELECT attempt, worker_id FROM jobs
WHERE id = $1 AND state IN ('ASSIGNED', 'RUNNING') AND worker_id IS NOT NULL
"""


async def pick_pair(conn: Conn) -> asyncpg.Record | None:
    """Lock the next (job, worker) to pair, or None when nothing can be paired now."""
    return await conn.fetchrow(PICK_PAIR)


async def occupy_worker(conn: Conn, worker_id: UUID, job_id: UUID) -> bool:
    return await conn.execute(OCCUPY_WORKER, worker_id, job_id) == "UPDATE 1"


async def provider_demand(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(PROVIDER_DEMAND)


async def unserved_jobs(
    conn: Conn, provider: str, cpus: float | None, memory_bytes: int | None, limit: int
) -> list[UUID]:
    """Up to ``limit`` waiting jobs of the class with no worker requested for them yet."""
    rows = await conn.fetch(_UNSERVED_JOBS, provider, cpus, memory_bytes, limit)
    return [row["id"] for row in rows]


async def idle_surplus(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(IDLE_SURPLUS)


async def unanswered_assignments(conn: Conn, older_than_s: float) -> list[asyncpg.Record]:
    return await conn.fetch(UNANSWERED_ASSIGNMENTS, older_than_s)


async def worker_for_release(conn: Conn, worker_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(WORKER_FOR_RELEASE, worker_id)


async def cancel_target(conn: Conn, job_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(JOB_CANCEL_TARGET, job_id)
