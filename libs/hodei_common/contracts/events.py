"""The audit view of a domain event, as ``jobs.events`` returns it."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Fields every domain event carries. ``event_id`` is also its ``Nats-Msg-Id``;
    ``correlation_id`` is the job whose run it belongs to (see hodei_common.lifecycle)."""

    event_id: UUID
    occurred_at: datetime
    correlation_id: str | None = None
    actor: str = "system"


class DomainEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the append-only domain_events audit log. ``correlation_id`` is the job
    whose run it belongs to; ``trace_id`` the trace that wrote it."""

    id: UUID
    seq: int
    event_type: str
    aggregate_type: str
    aggregate_id: UUID
    correlation_id: str | None = None
    actor: str
    payload: dict[str, Any]
    occurred_at: datetime
    trace_id: str | None = None
