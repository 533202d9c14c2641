"""Every transition of a worker: one function each, one named statement each
(``sql/workers.sql``).

A worker's events carry, as correlation id, the job it holds or was made for, so that
``hodei job events`` shows the worker's part of a job's run beside the job's own. Losing a
worker settles the job it holds in the same statement (:func:`lose`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from hodei_common.contracts.events import Event
from hodei_common.contracts.jobs import JobCancelled, JobRequeued, JobState
from hodei_common.contracts.workers import (
    ProvisionFailed,
    ProvisionRequested,
    WorkerCreated,
    WorkerFailed,
    WorkerHeartbeatMissed,
    WorkerMode,
    WorkerReady,
    WorkerRegistered,
    WorkerState,
    WorkerStopOrdered,
    WorkerTerminated,
    WorkerTerminating,
)
from hodei_common.database import Conn
from hodei_common.lifecycle import SQL_DIR, events, queries
from hodei_common.lifecycle.events import Emit
from hodei_common.lifecycle.transitions import JOBS, WORKERS

SQL = queries.load(SQL_DIR / "workers.sql")
WORKER_LOST = "worker lost"
# A resource status is one line of at most this many characters.
MAX_STATUS_CHARS = 300


@dataclass(frozen=True)
class WorkerRef:
    """Who a worker is, as its events name it: its id, provider and job (held or made for;
    their correlation id)."""

    id: UUID
    provider: str
    job: UUID | None = None


def _fields(worker: WorkerRef) -> dict[str, Any]:
    return {"worker_id": worker.id, "provider": worker.provider}


async def request(conn: Conn, worker: WorkerRef, *, mode: WorkerMode, cpus: float | None,
                  memory_bytes: int | None, actor: str) -> bool:
    """A new CREATING worker, requested for ``worker.job`` (None: the warm pool)."""
    t = WORKERS["request"]
    requested = events.new(ProvisionRequested, actor=actor, job=worker.job, **_fields(worker),
                           mode=mode, job_id=worker.job)
    return await SQL["request"].fetchrow(
        conn, worker_id=worker.id, provider=worker.provider, mode=mode.value,
        to_state=t.to_state, cpus=cpus, memory_bytes=memory_bytes, for_job_id=worker.job,
        events=events.encode([Emit(t, requested)])) is not None


async def begin_create(conn: Conn, worker_id: UUID) -> bool:
    """Its resource is about to be created (its provisioning saga's step runs, again on a
    redelivery); False when it is no longer CREATING."""
    return await SQL["begin_create"].fetchrow(
        conn, worker_id=worker_id, from_states=WORKERS["begin_create"].fence) is not None


async def record_resource(conn: Conn, worker: WorkerRef, resource_id: str, *, actor: str
                          ) -> bool:
    """The provider created its resource; False when the worker no longer wants one (it is
    gone, or another replica recorded its own)."""
    t = WORKERS["record_resource"]
    created = events.new(WorkerCreated, actor=actor, job=worker.job, **_fields(worker),
                         provider_resource_id=resource_id)
    return await SQL["record_resource"].fetchrow(
        conn, worker_id=worker.id, resource_id=resource_id, from_states=t.fence,
        events=events.encode([Emit(t, created)])) is not None


def status_line(status: str) -> str:
    """A provider's words as stored: one line, at most ``MAX_STATUS_CHARS``."""
    line = " ".join(status.split())
    if len(line) > MAX_STATUS_CHARS:
        line = line[: MAX_STATUS_CHARS - 3] + "..."
    return line


async def note_status(conn: Conn, worker_id: UUID, status: str) -> bool:
    """Record its provider's latest words about the worker's resource (``pod ... Pending:
    ContainerCreating``) while it is CREATING, READY or BUSY; True when they changed what
    was stored (blank words change nothing). No event: a progress note, like a heartbeat."""
    line = status_line(status)
    if not line:
        return False
    return await SQL["note_status"].fetchrow(
        conn, worker_id=worker_id, status=line,
        from_states=WORKERS["note_status"].fence) is not None


async def extend_credentials(conn: Conn, worker_id: UUID, expires_at: datetime) -> bool:
    """Record that the worker's agent gets a NATS user JWT expiring at ``expires_at`` (the
    latest such expiry is kept); False, and no JWT may be given, when it is not READY or
    BUSY. No event: a renewal is routine."""
    return await SQL["extend_credentials"].fetchrow(
        conn, worker_id=worker_id, expires_at=expires_at,
        from_states=WORKERS["extend_credentials"].fence) is not None


async def fail_create(conn: Conn, worker: WorkerRef, error: str, *, actor: str) -> bool:
    """CREATING -> FAILED: the provider could not create it; False when it left CREATING."""
    t = WORKERS["fail_create"]
    failed = events.new(ProvisionFailed, actor=actor, job=worker.job, **_fields(worker),
                        error=error)
    return await SQL["fail_create"].fetchrow(
        conn, worker_id=worker.id, error=error, from_states=t.fence, to_state=t.to_state,
        events=events.encode([Emit(t, failed)])) is not None


async def cannot_start(conn: Conn, worker: WorkerRef, reason: str, *, job_error: str,
                       created: bool, actor: str) -> bool:
    """CREATING -> FAILED because it can never start, and the QUEUED job it was made for
    (``worker.job``) FAILED with ``job_error`` in the same statement. ``created``: its
    resource exists (the registration step failed), else its creation did. False when the
    worker had left CREATING (nothing changed)."""
    t, j = WORKERS["cannot_start"], JOBS["fail_unstartable"]
    attempt = None if worker.job is None else await SQL["queued_attempt"].fetchval(
        conn, job_id=worker.job)
    emits = [Emit(t, events.new(WorkerFailed, actor=actor, job=worker.job, **_fields(worker),
                                error=reason, job_id=worker.job))]
    if worker.job is not None and attempt is not None:
        emits.append(Emit(j, events.new(
            j.event, actor=actor, job=worker.job, job_id=worker.job, attempt=attempt,
            state=JobState(j.target), error=job_error, worker_id=worker.id)))
    return await SQL["cannot_start"].fetchrow(
        conn, worker_id=worker.id, reason=reason, from_states=t.fence, to_state=t.to_state,
        job_id=worker.job, attempt=attempt, job_from=j.fence, job_to=j.to_state,
        job_error=job_error, step="await_registration" if created else "create_resource",
        events=events.encode(emits)) is not None


async def register(conn: Conn, worker: WorkerRef, hostname: str | None, *, actor: str,
                   public_key: str | None = None) -> asyncpg.Record | None:
    """CREATING -> READY (its mode, provider, provider settings and ``provision_s``, the
    seconds since it was requested); None when it is not
    CREATING. ``public_key`` is the nkey the agent's NATS user is bound to."""
    t = WORKERS["register"]
    emits = [Emit(t, events.new(kind, actor=actor, job=worker.job, **_fields(worker)))
             for kind in (WorkerRegistered, WorkerReady)]
    return await SQL["register"].fetchrow(
        conn, worker_id=worker.id, hostname=hostname, public_key=public_key,
        from_states=t.fence, to_state=t.to_state, events=events.encode(emits))


class Retirement(enum.StrEnum):
    """Why an idle worker is retired: a transition of the worker table."""

    IDLE = "retire_idle"  # idle past its provider's limit
    WIND_DOWN = "wind_down"  # the platform stops


async def retire(conn: Conn, worker: WorkerRef, why: Retirement, reason: str, *, actor: str
                 ) -> bool:
    """An idle worker -> TERMINATING: the provisioner destroys it."""
    t = WORKERS[why]
    leaving = events.new(WorkerTerminating, actor=actor, job=worker.job, **_fields(worker),
                         reason=reason)
    return await SQL["retire"].fetchrow(
        conn, worker_id=worker.id, from_states=t.fence, to_state=t.to_state,
        events=events.encode([Emit(t, leaving, step="retire")])) is not None


async def terminate(conn: Conn, worker: WorkerRef, reason: str, *, actor: str) -> bool:
    """TERMINATING -> TERMINATED: its resource is gone."""
    t = WORKERS["terminate"]
    gone = events.new(WorkerTerminated, actor=actor, job=worker.job, **_fields(worker),
                      reason=reason)
    return await SQL["terminate"].fetchrow(
        conn, worker_id=worker.id, from_states=t.fence, to_state=t.to_state,
        events=events.encode([Emit(t, gone)])) is not None


async def release_failed(conn: Conn, worker_id: UUID) -> bool:
    """A FAILED worker's resource is gone too (its recovery saga completes)."""
    return await SQL["release_failed"].fetchrow(
        conn, worker_id=worker_id, from_states=WORKERS["release_failed"].fence) is not None


async def beat(conn: Conn, beats: dict[UUID, datetime]) -> list[asyncpg.Record]:
    """Record the newest beat of each worker; return (id, state, provider, job_id) of the
    beaters that should be silent (state None: unknown)."""
    return await SQL["beat"].fetch(
        conn, worker_ids=list(beats), beats=list(beats.values()),
        from_states=WORKERS["beat"].fence, silent_states=WORKERS["order_stop"].fence)


async def order_stop(conn: Conn, worker: WorkerRef, state: WorkerState, *, at: datetime,
                     job_id: UUID | None, attempt: int | None, actor: str) -> bool:
    """Record the first stop order sent to a worker that should be gone; False after."""
    t = WORKERS["order_stop"]
    ordered = events.new(WorkerStopOrdered, actor=actor, job=job_id or worker.job,
                         occurred_at=at, **_fields(worker), state=state, job_id=job_id,
                         attempt=attempt)
    return await SQL["order_stop"].fetchrow(
        conn, worker_id=worker.id, from_states=t.fence,
        events=events.encode([Emit(t, ordered)])) is not None


# --- losing a worker ---------------------------------------------------------------------
class Fate(enum.StrEnum):
    """What becomes of the job a lost worker held (a cancel asked for wins: CANCELLED)."""

    REQUEUE = "requeue"  # QUEUED again as attempt + 1, or FAILED once attempts are used up
    FAIL = "fail"  # FAILED with the given error (the job's own fault: it ran out of memory)
    TIME_OUT = "time_out"  # TIMED_OUT: it ran past its timeout and no result came


@dataclass(frozen=True)
class HeldJob:
    """The unfinished job a worker holds."""

    id: UUID
    attempt: int
    max_attempts: int
    cancel_requested: bool
    traceparent: str | None = None  # the job's trace, which its recovery continues


@dataclass(frozen=True)
class LiveWorker:
    """A CREATING, READY or BUSY worker, and the job it holds."""

    ref: WorkerRef
    state: WorkerState
    job: HeldJob | None

    @property
    def id(self) -> UUID:
        return self.ref.id


async def live_worker(conn: Conn, worker_id: UUID) -> LiveWorker | None:
    """The worker and the job it holds; None when it is not live."""
    row = await SQL["live_worker"].fetchrow(conn, worker_id=worker_id,
                                            live_states=WORKERS["lose"].fence,
                                            held_states=JOBS["requeue"].fence)
    if row is None:
        return None
    job = None if row["job_id"] is None else HeldJob(
        id=row["job_id"], attempt=row["attempt"], max_attempts=row["max_attempts"],
        cancel_requested=row["cancel_requested"], traceparent=row["traceparent"])
    ref = WorkerRef(row["id"], row["provider"], job.id if job else row["for_job_id"])
    return LiveWorker(ref=ref, state=WorkerState(row["state"]), job=job)


def settlement(job: HeldJob, fate: Fate) -> str:
    """The job transition that settles the job of a lost worker."""
    if job.cancel_requested:
        return "cancel"
    if fate is Fate.REQUEUE:
        return "requeue" if job.attempt < job.max_attempts else "fail"
    return fate.value


@dataclass(frozen=True)
class Silence:
    """How a worker lost to silence was last heard of (``last_heartbeat`` None: never)."""

    last_heartbeat: datetime | None
    silent_s: float


async def lose(conn: Conn, worker: LiveWorker, reason: str, *, fate: Fate,
               job_error: str | None, backoff_s: float, silence: Silence | None = None,
               actor: str) -> str | None:
    """Declare the worker FAILED with ``reason`` and settle the job it holds, in one
    statement; return the job transition made (``requeue``, ``cancel``, ``fail``,
    ``time_out``; ``none`` for a worker without a job), or None when nothing changed (the
    worker or its job moved since ``worker`` was read). ``silence``: it was lost to silence
    (``WorkerHeartbeatMissed`` comes before ``WorkerFailed``)."""
    t = WORKERS["lose"]
    job = worker.job
    emits = [] if silence is None else [Emit(t, events.new(
        WorkerHeartbeatMissed, actor=actor, job=worker.ref.job, **_fields(worker.ref),
        last_heartbeat=silence.last_heartbeat, silent_s=silence.silent_s))]
    emits.append(Emit(t, events.new(WorkerFailed, actor=actor, job=worker.ref.job,
                                    **_fields(worker.ref), error=reason,
                                    job_id=job.id if job else None)))
    common: dict[str, Any] = {"conn": conn, "worker_id": worker.id, "reason": reason,
                              "from_states": t.fence, "to_state": t.to_state}
    if job is None:
        done = await SQL["lose"].fetchrow(**common, events=events.encode(emits))
        return None if done is None else "none"
    settle = settlement(job, fate)
    j = JOBS[settle]
    error = job_error or f"{WORKER_LOST}: {reason}"
    meta: dict[str, Any] = {"actor": actor, "job": job.id, "job_id": job.id,
                            "attempt": job.attempt}
    common |= {"job_id": job.id, "attempt": job.attempt, "job_from": j.fence,
               "job_to": j.to_state, "job_error": error}
    if settle == "requeue":
        now = datetime.now(UTC)
        requeued = events.new(JobRequeued, **{**meta, "attempt": job.attempt + 1},
                              occurred_at=now, previous_worker_id=worker.id, reason=error,
                              backoff_s=backoff_s,
                              not_before=now + timedelta(seconds=backoff_s))
        emits.append(Emit(j, requeued, step="requeue"))
        done = await SQL["lose_and_requeue"].fetchrow(
            **common, backoff_s=backoff_s, events=events.encode(emits))
    else:
        ended: Event
        if settle == "cancel":
            ended = events.new(JobCancelled, **meta, reason=f"cancelled by request; {error}")
        else:
            ended = events.new(j.event, **meta, state=JobState(j.target), error=error,
                               worker_id=worker.id)
        emits.append(Emit(j, ended, step="end_job"))
        done = await SQL["lose_and_end_job"].fetchrow(
            **common, cancel_requested=job.cancel_requested, events=events.encode(emits))
    return None if done is None else settle
