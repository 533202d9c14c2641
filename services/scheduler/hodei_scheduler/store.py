"""SQL of the scheduler: the questions of its dispatch passes and of the reports it applies."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from hodei_common.database import Conn

# Up to $1 QUEUED jobs of providers with READY workers, best first, each paired with a
# different READY worker that fits it: the one requested for it when there is one, else one of
# its provider made with its limits (NULL: the provider's defaults) and not requested for
# another job that still waits, longest idle first. ``considered`` counts the jobs looked at:
# fewer than $1 means no other job could be paired now. Each provider's jobs are read in the
# queue index's order (priority, age, id), so a pass reads at most $1 of them per provider
# with READY workers, however long the queue.
PICK_PAIRS = """
WITH j AS (
    SELECT q.* FROM (SELECT DISTINCT provider FROM workers WHERE state = 'READY') AS r,
    LATERAL (
        SELECT id, provider, attempt, priority, queued_at, cpus, memory_bytes FROM jobs
        WHERE state = 'QUEUED' AND provider = r.provider
          AND (not_before IS NULL OR not_before <= now())
        ORDER BY priority DESC, queued_at, id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ) AS q
    ORDER BY priority DESC, queued_at, id
    LIMIT $1
),
w AS (
    SELECT id, provider, idle_since, cpus, memory_bytes, for_job_id,
           EXISTS (SELECT 1 FROM jobs q WHERE q.id = workers.for_job_id AND q.state = 'QUEUED')
               AS reserved
    FROM workers
    WHERE state = 'READY' AND provider IN (SELECT provider FROM j)
    FOR UPDATE SKIP LOCKED
),
own AS (
    SELECT j.id AS job_id, j.attempt, w.id AS worker_id, j.provider
    FROM j JOIN w ON w.for_job_id = j.id
),
jr AS (
    SELECT id, provider, attempt, cpus, memory_bytes, row_number() OVER (
        PARTITION BY provider, cpus, memory_bytes ORDER BY priority DESC, queued_at, id) AS rank
    FROM j WHERE id NOT IN (SELECT job_id FROM own)
),
wr AS (
    SELECT id, provider, cpus, memory_bytes, row_number() OVER (
        PARTITION BY provider, cpus, memory_bytes ORDER BY idle_since NULLS FIRST, id) AS rank
    FROM w WHERE NOT reserved
)
SELECT job_id, attempt, worker_id, provider, (SELECT count(*) FROM j) AS considered FROM own
UNION ALL
SELECT jr.id, jr.attempt, wr.id, jr.provider, (SELECT count(*) FROM j)
FROM jr JOIN wr ON wr.provider = jr.provider AND wr.rank = jr.rank
    AND wr.cpus IS NOT DISTINCT FROM jr.cpus
    AND wr.memory_bytes IS NOT DISTINCT FROM jr.memory_bytes
ORDER BY provider
"""

# Demand per enabled provider and per class of limits (a worker serves only jobs of its
# class); the class of NULL limits also holds the warm pool. A provider's queue is read in the
# order it is served (priority, age, id) only as far as could change what a pass does: no
# more jobs than its room for new workers plus its workers being made or idle (so a full
# provider reads none); its classes come in the order of their first job read.
PROVIDER_DEMAND = """
WITH p AS (
    SELECT p.name, p.worker_mode, p.max_workers, p.min_idle, w.active, w.spare
    FROM provider_configs p, LATERAL (
        SELECT count(*) AS active,
               count(*) FILTER (WHERE state IN ('CREATING', 'READY')) AS spare
        FROM workers
        WHERE provider = p.name AND state IN ('CREATING', 'READY', 'BUSY', 'TERMINATING')
    ) AS w
    WHERE p.enabled
), c AS (
    SELECT q.provider, q.cpus, q.memory_bytes, count(*) AS queued, 0 AS creating, 0 AS ready,
           min(q.place) AS place
    FROM (
        SELECT j.provider, j.cpus, j.memory_bytes, row_number() OVER (
            PARTITION BY j.provider ORDER BY j.priority DESC, j.queued_at, j.id) AS place
        FROM p, LATERAL (
            SELECT provider, cpus, memory_bytes, priority, queued_at, id FROM jobs
            WHERE state = 'QUEUED' AND provider = p.name
            ORDER BY priority DESC, queued_at, id
            LIMIT greatest(p.max_workers - p.active, 0) + p.spare
        ) AS j
    ) AS q
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT provider, cpus, memory_bytes, 0, count(*) FILTER (WHERE state = 'CREATING'),
           count(*) FILTER (WHERE state = 'READY'), NULL
    FROM workers WHERE state IN ('CREATING', 'READY') GROUP BY 1, 2, 3
    UNION ALL
    SELECT name, NULL, NULL, 0, 0, 0, NULL FROM p
)
SELECT p.name, p.worker_mode, p.max_workers, p.min_idle, p.active, c.cpus, c.memory_bytes,
       sum(c.queued)::int AS queued, sum(c.creating)::int AS creating,
       sum(c.ready)::int AS ready
FROM p JOIN c ON c.provider = p.name
GROUP BY p.name, p.worker_mode, p.max_workers, p.min_idle, p.active, c.cpus, c.memory_bytes
ORDER BY p.name, min(c.place) NULLS LAST
"""

# READY workers idle past their provider's idle_ttl_s, beyond the min_idle freshest ones.
IDLE_SURPLUS = """
SELECT id, provider, for_job_id, ttl FROM (
    SELECT w.id, w.provider, w.for_job_id, w.idle_since, p.min_idle,
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
SELECT id, attempt, worker_id, command, args, env, timeout_s, assigned_at, namespace,
       traceparent
FROM jobs WHERE state = 'ASSIGNED' AND accepted_at IS NULL
  AND assigned_at < now() - make_interval(secs => $1)
ORDER BY assigned_at
LIMIT 100
"""

WORKER_PROVIDER = "SELECT provider FROM workers WHERE id = $1"

JOBS_WAITING = "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'QUEUED' AND provider = $1)"

# Where the job stands now, for a report that matched nothing: repeated, or stale.
JOB_NOW = """
SELECT j.attempt, j.worker_id, w.state AS reporter_state, w.provider AS reporter_provider
FROM jobs j LEFT JOIN workers w ON w.id = $2
WHERE j.id = $1
"""

JOB_CANCEL_TARGET = """
SELECT attempt, worker_id FROM jobs
WHERE id = $1 AND state IN ('ASSIGNED', 'RUNNING') AND worker_id IS NOT NULL
"""


async def pick_pairs(conn: Conn, limit: int) -> list[asyncpg.Record]:
    """Lock the next (job, worker) pairs, best job first; none when nothing fits now."""
    return await conn.fetch(PICK_PAIRS, limit)


async def jobs_waiting(conn: Conn, provider: str) -> bool:
    """Whether a job of ``provider`` is queued (in its backoff or not)."""
    return bool(await conn.fetchval(JOBS_WAITING, provider))


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


async def worker_provider(conn: Conn, worker_id: UUID) -> str | None:
    provider: str | None = await conn.fetchval(WORKER_PROVIDER, worker_id)
    return provider


async def job_now(conn: Conn, job_id: UUID, reporter: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(JOB_NOW, job_id, reporter)


async def cancel_target(conn: Conn, job_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(JOB_CANCEL_TARGET, job_id)
