"""SQL of the supervisor."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from hodei_common.database import Conn

# One statement for a whole batch; a late, older beat never moves the time back.
RECORD_HEARTBEATS = """
UPDATE workers SET last_heartbeat = beat.at
FROM unnest($1::uuid[], $2::timestamptz[]) AS beat(id, at)
WHERE workers.id = beat.id AND (workers.last_heartbeat IS NULL OR workers.last_heartbeat < beat.at)
"""


async def record_heartbeats(conn: Conn, beats: dict[UUID, datetime]) -> None:
    await conn.execute(RECORD_HEARTBEATS, list(beats), list(beats.values()))
