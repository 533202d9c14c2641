"""SQL of the logs service."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from hodei_common.database import Conn
from hodei_common.logarchive import Written

FINAL_STATE = """
SELECT id, attempt, state, exit_code, error FROM jobs
WHERE id = $1 AND state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT')
"""

ARCHIVED = "SELECT 1 FROM job_log_files WHERE job_id = $1"

RECORD_ARCHIVE = """
WITH archived AS (
    INSERT INTO job_log_files (job_id, attempt, storage_uri, size_bytes, entry_count, sha256,
                               truncated)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (job_id, attempt) DO UPDATE
       SET storage_uri = EXCLUDED.storage_uri, size_bytes = EXCLUDED.size_bytes,
           entry_count = EXCLUDED.entry_count, sha256 = EXCLUDED.sha256,
           truncated = EXCLUDED.truncated
    RETURNING job_id
)
UPDATE jobs SET log_truncated = true
WHERE $7 AND id = (SELECT job_id FROM archived) AND NOT log_truncated
"""

EXPIRED = """
SELECT job_id FROM job_log_files
WHERE created_at < now() - make_interval(secs => $1)
ORDER BY created_at LIMIT $2
"""

FORGET = "DELETE FROM job_log_files WHERE job_id = ANY($1::uuid[])"


async def final_state(conn: Conn, job_id: UUID) -> asyncpg.Record | None:
    """The job's terminal state, or None while it is not finished."""
    return await conn.fetchrow(FINAL_STATE, job_id)


async def archived(conn: Conn, job_id: UUID) -> bool:
    return bool(await conn.fetchval(ARCHIVED, job_id))


async def record_archive(conn: Conn, job_id: UUID, attempt: int, uri: str,
                         written: Written) -> None:
    """The job_log_files row of a stored archive (and the job's truncation mark)."""
    await conn.execute(RECORD_ARCHIVE, job_id, attempt, uri, written.size_bytes,
                       written.lines, written.sha256, written.truncated)


async def expired(conn: Conn, max_age_s: float, limit: int) -> list[UUID]:
    """Jobs whose archive is older than ``max_age_s``, oldest first."""
    return [row["job_id"] for row in await conn.fetch(EXPIRED, max_age_s, limit)]


async def forget(conn: Conn, job_ids: list[UUID]) -> None:
    await conn.execute(FORGET, job_ids)
