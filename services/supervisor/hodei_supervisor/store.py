"""SQL of the supervisor: the questions its sweeps ask."""

from __future__ import annotations

import asyncpg

from hodei_common.database import Conn

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


# The platform's state for its gauges, at scrape time: queued jobs (provider NULL), and
# live workers of every provider in every live state (0 included, so that no series is
# missing between two scrapes that saw a state come and go).
PLATFORM_STATE = """
WITH live AS (
    SELECT provider, state::text AS state, count(*) AS n FROM workers
    WHERE state IN ('CREATING', 'READY', 'BUSY', 'TERMINATING')
    GROUP BY provider, state
)
SELECT NULL::text AS provider, 'QUEUED' AS state, count(*) AS n FROM jobs WHERE state = 'QUEUED'
UNION ALL
SELECT p.name, s.state, coalesce(live.n, 0)
FROM provider_configs AS p
CROSS JOIN unnest(ARRAY['CREATING', 'READY', 'BUSY', 'TERMINATING']) AS s(state)
LEFT JOIN live ON live.provider = p.name AND live.state = s.state
"""


async def platform_state(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(PLATFORM_STATE)
