"""SQL of the supervisor: heartbeats, and the questions its sweeps ask."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from hodei_common.database import Conn

# One statement for a whole batch; a late, older beat never moves the time back. It also
# returns the beats of workers that should be silent: finished, declared dead, or unknown.
RECORD_HEARTBEATS = """
WITH beat AS (SELECT * FROM unnest($1::uuid[], $2::timestamptz[]) AS b(id, at)),
recorded AS (
    UPDATE workers SET last_heartbeat = beat.at
    FROM beat
    WHERE workers.id = beat.id
      AND (workers.last_heartbeat IS NULL OR workers.last_heartbeat < beat.at)
)
SELECT beat.id, w.state, w.provider FROM beat LEFT JOIN workers w ON w.id = beat.id
WHERE w.id IS NULL OR w.state IN ('FAILED', 'TERMINATED')
"""

# The first beat of a worker that should be gone: it is told to stop, and that is recorded.
STOP_ORDERED = """
UPDATE workers SET stop_ordered_at = now()
WHERE id = $1 AND state IN ('FAILED', 'TERMINATED') AND stop_ordered_at IS NULL
RETURNING id
"""

SILENT_WORKERS = """
SELECT id, provider, last_heartbeat,
       extract(epoch FROM now() - coalesce(last_heartbeat, registered_at))::float8 AS silent_s
FROM workers
WHERE state IN ('READY', 'BUSY')
  AND coalesce(last_heartbeat, registered_at) < now() - make_interval(secs => $1)
ORDER BY coalesce(last_heartbeat, registered_at)
LIMIT 200
"""

UNACCEPTED_JOBS = """
SELECT id, attempt, worker_id FROM jobs
WHERE state = 'ASSIGNED' AND accepted_at IS NULL
  AND assigned_at < now() - make_interval(secs => $1)
ORDER BY assigned_at
LIMIT 200
"""

OVERDUE_JOBS = """
SELECT id, attempt, worker_id, timeout_s FROM jobs
WHERE state = 'RUNNING' AND started_at < now() - make_interval(secs => timeout_s + $1)
ORDER BY started_at
LIMIT 200
"""

# Jobs still running this long after a cancel was asked for: the order (core NATS) may be lost.
CANCELS_PENDING = """
SELECT id, attempt, worker_id FROM jobs
WHERE state IN ('ASSIGNED', 'RUNNING') AND worker_id IS NOT NULL
  AND cancel_requested_at < now() - make_interval(secs => $1)
LIMIT 200
"""

UNREGISTERED_WORKERS = """
SELECT id FROM workers
WHERE state = 'CREATING' AND created_at < now() - make_interval(secs => $1)
ORDER BY created_at
LIMIT 200
"""


async def record_heartbeats(conn: Conn, beats: dict[UUID, datetime]) -> list[asyncpg.Record]:
    """Record the beats; return (id, state, provider) of workers that should be silent."""
    return await conn.fetch(RECORD_HEARTBEATS, list(beats), list(beats.values()))


async def silent_workers(conn: Conn, limit_s: float) -> list[asyncpg.Record]:
    return await conn.fetch(SILENT_WORKERS, limit_s)


async def unaccepted_jobs(conn: Conn, limit_s: float) -> list[asyncpg.Record]:
    return await conn.fetch(UNACCEPTED_JOBS, limit_s)


async def overdue_jobs(conn: Conn, grace_s: float) -> list[asyncpg.Record]:
    return await conn.fetch(OVERDUE_JOBS, grace_s)


async def unregistered_workers(conn: Conn, limit_s: float) -> list[asyncpg.Record]:
    return await conn.fetch(UNREGISTERED_WORKERS, limit_s)


async def cancels_pending(conn: Conn, older_than_s: float) -> list[asyncpg.Record]:
    return await conn.fetch(CANCELS_PENDING, older_than_s)
