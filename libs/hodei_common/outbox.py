"""The transactional outbox writer: a state change, its audit row and its event, one commit.

Call :func:`record` inside the transaction that changes state. The event reaches JetStream
through :mod:`hodei_common.relay`; the trace context of the writer is stored with the row so
the published message continues the trace that caused it.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from hodei_common import tracing
from hodei_common.contracts.events import Event
from hodei_common.contracts.subjects import OUTBOX_NOTIFY_CHANNEL
from hodei_common.database import Conn

_INSERT_AUDIT = """
INSERT INTO domain_events
    (id, event_type, aggregate_type, aggregate_id, correlation_id, actor, payload, occurred_at)
VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8)
"""
_INSERT_OUTBOX = """
INSERT INTO outbox_events (id, subject, event_type, payload, headers)
VALUES ($1, $2, $3, $4, $5)
"""


def event_type(event: Event) -> str:
    """The audit name of an event: its struct's class name (``JobCreated``)."""
    return type(event).__name__


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
    payload = msgspec.json.encode(event)
    name = event_type(event)
    await conn.execute(
        _INSERT_AUDIT,
        event.event_id,
        name,
        aggregate_type,
        aggregate_id,
        event.correlation_id,
        event.actor,
        payload.decode(),
        event.occurred_at,
    )
    await conn.execute(
        _INSERT_OUTBOX, event.event_id, subject, name, payload, tracing.inject()
    )
    # Delivered at commit, and collapsed with any other NOTIFY of this transaction.
    await conn.execute("SELECT pg_notify($1, '')", OUTBOX_NOTIFY_CHANNEL)
