"""SQL of the logs service."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from hodei_common.database import Conn

FINAL_STATE = """
SELECT id, namespace, attempt, state, exit_code, error FROM jobs
WHERE id = $1 AND state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT')
"""

ARCHIVED = "SELECT 1 FROM job_log_files WHERE job_id = $1"

EXPIRED = """
SELECT f.job_id, j.namespace FROM job_log_files f JOIN jobs j ON j.id = f.job_id
WHERE f.created_at < now() - make_interval(secs => $1)
ORDER BY f.created_at LIMIT $2
"""

FORGET = "DELETE FROM job_log_files WHERE job_id = ANY($1::uuid[])"


async def final_state(conn: Conn, job_id: UUID) -> asyncpg.Record | None:
    """The job's terminal state, or None while it is not finished."""
    return await conn.fetchrow(FINAL_STATE, job_id)


async def archived(conn: Conn, job_id: UUID) -> bool:
    return bool(await conn.fetchval(ARCHIVED, job_id))


async def expired(conn: Conn, max_age_s: float, limit: int) -> list[tuple[str, UUID]]:
    """Jobs whose archive is older than ``max_age_s`` (namespace, id), oldest first."""
    return [(row["namespace"], row["job_id"])
            for row in await conn.fetch(EXPIRED, max_age_s, limit)]


async def forget(conn: Conn, job_ids: list[UUID]) -> None:
    await conn.execute(FORGET, job_ids)
