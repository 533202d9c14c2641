"""SQL of the logs service."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from hodei_common.database import Conn

FINAL_STATE = """
SELECT id, attempt, state, exit_code, error FROM jobs
WHERE id = $1 AND state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT')
"""


async def final_state(conn: Conn, job_id: UUID) -> asyncpg.Record | None:
    """The job's terminal state, or None while it is not finished."""
    return await conn.fetchrow(FINAL_STATE, job_id)
