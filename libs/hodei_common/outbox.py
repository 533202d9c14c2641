"""The transactional outbox writer: a state change, its audit row and its event, one commit.

Two ways in, both atomic:

* :func:`change` runs a conditional state change (a statement that returns the changed row,
  or no row when the change does not apply) and records the event only if a row came back,
  all in ONE statement: one round trip, no explicit transaction needed.
* :func:`record` appends an event inside a transaction the caller already holds.

Either way the event reaches JetStream through :mod:`hodei_common.relay`; the writer's trace
context is stored with the row so the published message continues the trace that caused it.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from hodei_common import tracing
from hodei_common.contracts.events import Event
from hodei_common.contracts.subjects import OUTBOX_NOTIFY_CHANNEL
from hodei_common.database import Conn

_EVENT_PARAMS = 10


def _event_ctes(first: int, source: str) -> str:
    """Audit + outbox inserts and the NOTIFY, taking event params from ``$first`` on."""
    p = [f"${first + i}" for i in range(_EVENT_PARAMS)]
    return f"""
audit AS (
    INSERT INTO domain_events (id, event_type, aggregate_type, aggregate_id, correlation_id,
                               actor, payload, occurred_at)
    SELECT {p[0]}::uuid, {p[1]}::text, {p[2]}::text, {p[3]}::uuid, {p[4]}::text, {p[5]}::text,
           {p[6]}::text::jsonb, {p[7]}::timestamptz
    FROM {source}
),
queued AS (
    INSERT INTO outbox_events (id, subject, event_type, payload, headers)
    SELECT {p[0]}::uuid, {p[8]}::text, {p[1]}::text, convert_to({p[6]}::text, 'UTF8'),
           {p[9]}::jsonb
    FROM {source}
),
notified AS (SELECT pg_notify('{OUTBOX_NOTIFY_CHANNEL}', '') FROM {source})"""


def _change_sql(state_sql: str, state_params: int) -> str:
    return f"""
WITH state AS ({state_sql}),
changed AS (SELECT 1 FROM state LIMIT 1),
{_event_ctes(state_params + 1, "changed")}
SELECT state.* FROM state, (SELECT count(*) FROM notified) AS delivered"""


_RECORD_SQL = f"""
WITH one AS (SELECT 1),
{_event_ctes(1, "one")}
SELECT count(*) FROM notified"""


def event_type(event: Event) -> str:
    """The audit name of an event: its struct's class name (``JobCreated``)."""
    return type(event).__name__


def _event_args(
    event: Event, subject: str, aggregate_type: str, aggregate_id: UUID
) -> list[Any]:
    payload = msgspec.json.encode(event).decode()
    return [
        event.event_id, event_type(event), aggregate_type, aggregate_id, event.correlation_id,
        event.actor, payload, event.occurred_at, subject, tracing.inject(),
    ]


async def change(
    conn: Conn,
    state_sql: str,
    *args: Any,
    subject: str,
    event: Event,
    aggregate_type: str,
    aggregate_id: UUID,
) -> asyncpg.Record | None:
    """Apply a conditional state change and, only when it applied, its event.

    ``state_sql`` is an INSERT/UPDATE ... RETURNING using ``$1..$n`` for ``args``; the
    returned row (or None when the change did not apply) is given back.
    """
    sql = _change_sql(state_sql, len(args))
    return await conn.fetchrow(sql, *args, *_event_args(event, subject, aggregate_type,
                                                         aggregate_id))


async def record(
    conn: Conn,
    *,
    subject: str,
    event: Event,
    aggregate_type: str,
    aggregate_id: UUID,
) -> None:
    """Append ``event`` to the audit log and the outbox in the caller's transaction."""
    if not conn.is_in_transaction():
        raise RuntimeError("outbox.record must run inside the state change's transaction")
    await conn.fetchval(_RECORD_SQL, *_event_args(event, subject, aggregate_type, aggregate_id))
