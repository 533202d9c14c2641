"""SQL of the logs service."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from hodei_common.database import Conn

# The jobs as their logs are to be archived: each one's terminal state (NULL while it has
# none), and whether its archive is recorded already.
TO_ARCHIVE = """
SELECT id, namespace, attempt,
       CASE WHEN state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT') THEN state END
           AS state,
       exit_code, error,
       EXISTS (SELECT 1 FROM job_log_files AS f WHERE f.job_id = jobs.id) AS archived
FROM jobs WHERE id = ANY($1::uuid[])
"""

EXPIRED = """
SELECT f.job_id, j.namespace FROM job_log_files f JOIN jobs j ON j.id = f.job_id
WHERE f.created_at < now() - make_interval(secs => $1)
ORDER BY f.created_at LIMIT $2
"""

FORGET = "DELETE FROM job_log_files WHERE job_id = ANY($1::uuid[])"


async def to_archive(conn: Conn, job_ids: list[UUID]) -> dict[UUID, asyncpg.Record]:
    """The jobs of ``job_ids`` that exist (see ``TO_ARCHIVE``), by id."""
    return {row["id"]: row for row in await conn.fetch(TO_ARCHIVE, job_ids)}


async def expired(conn: Conn, max_age_s: float, limit: int) -> list[tuple[str, UUID]]:
    """Jobs whose archive is older than ``max_age_s`` (namespace, id), oldest first."""
    return [(row["namespace"], row["job_id"])
            for row in await conn.fetch(EXPIRED, max_age_s, limit)]


async def forget(conn: Conn, job_ids: list[UUID]) -> None:
    await conn.execute(FORGET, job_ids)
