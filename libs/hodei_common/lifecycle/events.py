"""Event envelopes, made one way, and how a statement receives the events it may record.

:func:`new` is the one constructor: it fills the event id, the time, the actor and the
correlation id, which is the job the event belongs to (for a worker, the job it holds or
was made for), so that every audit row of a job's run, its worker's included, leads to the
job. :class:`Emit` ties an event to the transition that records it (its subject and
aggregate come from the transition table) and to the step of the statement after which it
counts. :func:`encode` turns the emits into the ``:events`` parameter the statements pass to
``hodei_record_events``, with the writer's trace context and the event's job as baggage, so
the published message continues the trace that caused it (the job's, which
``hodei_record_events`` gives an event written outside it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

import msgspec

from hodei_common import tracing
from hodei_common.contracts.events import Event
from hodei_common.lifecycle.transitions import Transition

E = TypeVar("E", bound=Event)


def new(kind: type[E], /, *, actor: str, job: UUID | None, event_id: UUID | None = None,
        occurred_at: datetime | None = None, **fields: Any) -> E:
    """An event of ``kind`` by ``actor`` in the run of ``job`` (its correlation id)."""
    return kind(event_id=event_id or uuid4(), occurred_at=occurred_at or datetime.now(UTC),
                actor=actor, correlation_id=None if job is None else str(job), **fields)


def event_type(event: Event) -> str:
    """The audit name of an event: its struct's class name (``JobCreated``)."""
    return type(event).__name__


@dataclass(frozen=True)
class Emit:
    """``event``, recorded by ``transition`` when the statement's ``step`` applied (by
    default the step named after the transition). Its aggregate is the event's job or
    worker, or ``aggregate``."""

    transition: Transition
    event: Event
    step: str = ""
    aggregate: UUID | None = None

    @property
    def aggregate_id(self) -> UUID:
        if self.aggregate is not None:
            return self.aggregate
        value: UUID = getattr(self.event, f"{self.transition.aggregate}_id")
        return value


class _Row(msgspec.Struct, frozen=True):
    id: UUID
    event_type: str
    aggregate_type: str
    aggregate_id: UUID
    correlation_id: str | None
    actor: str
    payload: str
    occurred_at: datetime
    subject: str
    headers: dict[str, str]
    trace_id: str | None
    step: str
    job: str | None  # the job whose stored trace to continue: written outside it


def encode(emits: Sequence[Emit], *, starts_trace: bool = False) -> str:
    """The ``:events`` parameter: a JSON array of the rows to record, in order.

    An event written in its job's trace (the writer handles something of that job: its
    baggage names it) or as the job's first step (``starts_trace``: the writer's trace becomes
    the job's) is recorded as written; any other event of a job asks ``hodei_record_events``
    for the job's trace, which costs a lookup, so only those ask."""
    headers = tracing.inject()
    trace_id = tracing.trace_id()
    current = None if starts_trace else tracing.current_job()
    return msgspec.json.encode([
        _Row(id=e.event.event_id, event_type=event_type(e.event),
             aggregate_type=e.transition.aggregate, aggregate_id=e.aggregate_id,
             correlation_id=e.event.correlation_id, actor=e.event.actor,
             payload=msgspec.json.encode(e.event).decode(), occurred_at=e.event.occurred_at,
             subject=e.transition.subject(e.event), headers=_headers(headers, e.event),
             trace_id=trace_id, step=e.step or e.transition.name,
             job=None if starts_trace or e.event.correlation_id == current
             else e.event.correlation_id)
        for e in emits
    ]).decode()


def _headers(written: dict[str, str], event: Event) -> dict[str, str]:
    """The writer's trace headers, with the event's job, attempt and worker as baggage."""
    if event.correlation_id is None:
        return written
    return {**written, "baggage": tracing.job_baggage(
        event.correlation_id, getattr(event, "attempt", None), getattr(event, "worker_id", None))}
