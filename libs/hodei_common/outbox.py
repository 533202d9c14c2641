"""The transactional outbox writer: a state change, its audit rows and its events, one commit.

Two ways in, both atomic:

* :func:`transition` runs one or more conditional state changes (statements that return the
  changed rows, or none when the change does not apply) and records each event only if the
  step it belongs to changed something, all in ONE statement: one round trip, no explicit
  transaction needed. :func:`change` is its one-step, one-event form.
* :func:`record` appends an event inside a transaction the caller already holds.

Either way the event reaches JetStream through :mod:`hodei_common.relay`; the writer's trace
context is stored with the row so the published message continues the trace that caused it.
Events of one statement are stored (and so published) in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from hodei_common import tracing
from hodei_common.contracts.events import Event
from hodei_common.contracts.subjects import OUTBOX_NOTIFY_CHANNEL
from hodei_common.database import Conn

FIRST_STEP = "state"
# Every event column travels as one array parameter, whatever the number of events.
_EVENT_COLUMNS = (
    ("id", "uuid"), ("event_type", "text"), ("aggregate_type", "text"),
    ("aggregate_id", "uuid"), ("correlation_id", "text"), ("actor", "text"),
    ("payload", "text"), ("occurred_at", "timestamptz"), ("subject", "text"),
    ("headers", "text"), ("step", "text"),
)


@dataclass(frozen=True)
class Emit:
    """An event to record when step ``after`` of a transition changed at least one row."""

    event: Event
    subject: str
    aggregate_type: str
    aggregate_id: UUID
    after: str = FIRST_STEP


def event_type(event: Event) -> str:
    """The audit name of an event: its struct's class name (``JobCreated``)."""
    return type(event).__name__


def _events_sql(first: int, steps: Sequence[str]) -> str:
    """CTEs that record the events whose step applied, then NOTIFY the relay once."""
    params = ", ".join(f"${first + i}::{kind}[]" for i, (_, kind) in enumerate(_EVENT_COLUMNS))
    names = ", ".join(name for name, _ in _EVENT_COLUMNS)
    applied = " UNION ALL ".join(
        f"SELECT '{step}'::text AS step WHERE EXISTS (SELECT 1 FROM {step})" for step in steps
    )
    return f"""
applied AS ({applied}),
events AS (
    SELECT e.*, e.ordinality AS n
    FROM unnest({params}) WITH ORDINALITY AS e({names}, ordinality)
    WHERE e.step IN (SELECT step FROM applied)
),
audit AS (
    INSERT INTO domain_events (id, event_type, aggregate_type, aggregate_id, correlation_id,
                               actor, payload, occurred_at)
    SELECT id, event_type, aggregate_type, aggregate_id, correlation_id, actor,
           payload::jsonb, occurred_at
    FROM events ORDER BY n
),
queued AS (
    INSERT INTO outbox_events (id, subject, event_type, payload, headers)
    SELECT id, subject, event_type, convert_to(payload, 'UTF8'), headers::jsonb
    FROM events ORDER BY n
),
notified AS (
    SELECT pg_notify('{OUTBOX_NOTIFY_CHANNEL}', '')
    FROM (SELECT 1 FROM events LIMIT 1) AS first_event
)"""


@lru_cache(maxsize=256)
def _transition_sql(steps: tuple[tuple[str, str], ...], state_params: int) -> str:
    names = [name for name, _ in steps]
    ctes = ",\n".join(f"{name} AS ({sql})" for name, sql in steps)
    counts = " UNION ALL ".join(
        f"SELECT {i} AS i, count(*) AS n FROM {name}" for i, name in enumerate(names))
    return f"""
WITH {ctes},
{_events_sql(state_params + 1, names)}
SELECT {names[0]}.*, ARRAY(SELECT n FROM ({counts}) AS c ORDER BY i) AS step_rows
FROM {names[0]}, (SELECT count(*) FROM notified) AS delivered"""


_RECORD_SQL = f"""
WITH {FIRST_STEP} AS (SELECT 1),
{_events_sql(1, [FIRST_STEP])}
SELECT count(*) FROM notified"""


def _event_arrays(emits: Sequence[Emit]) -> list[list[Any]]:
    headers = msgspec.json.encode(tracing.inject()).decode()
    rows = [
        (e.event.event_id, event_type(e.event), e.aggregate_type, e.aggregate_id,
         e.event.correlation_id, e.event.actor, msgspec.json.encode(e.event).decode(),
         e.event.occurred_at, e.subject, headers, e.after)
        for e in emits
    ]
    return [list(column) for column in zip(*rows, strict=True)] if rows else [
        [] for _ in _EVENT_COLUMNS
    ]


async def transition(
    conn: Conn, steps: Sequence[tuple[str, str]], args: Sequence[Any], emits: Sequence[Emit]
) -> list[asyncpg.Record]:
    """Run conditional state changes and the events of those that applied, atomically.

    ``steps`` are ``(name, sql)`` pairs: INSERT/UPDATE ... RETURNING statements using
    ``$1..$n`` for ``args``; a later step may read an earlier one's rows by its name (a step
    that must apply only when an earlier one did says ``WHERE EXISTS (SELECT 1 FROM name)``).
    Returns the first step's rows, each with ``step_rows``: how many rows each step returned,
    in order. No rows: the first step did not apply (and no event of it was kept).
    """
    sql = _transition_sql(tuple(steps), len(args))
    return await conn.fetch(sql, *args, *_event_arrays(emits))


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
    rows = await transition(conn, [(FIRST_STEP, state_sql)], args,
                            [Emit(event, subject, aggregate_type, aggregate_id)])
    return rows[0] if rows else None


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
    await conn.fetchval(_RECORD_SQL, *_event_arrays([Emit(event, subject, aggregate_type,
                                                          aggregate_id)]))
