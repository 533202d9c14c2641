"""Every transition of a job: one function each, one named statement each (``sql/jobs.sql``).

Each function returns what its statement returned, or None (False) when the job was not
where the transition's fence expects it: then nothing changed and nothing was recorded.
Events carry the job as their correlation id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec

from hodei_common import tracing
from hodei_common.contracts.agent import Outcome, StatusReport
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.events import Event
from hodei_common.contracts.jobs import (
    JobAccepted,
    JobAssigned,
    JobCancelled,
    JobCancelRequested,
    JobCreated,
    JobStarted,
    JobState,
    StaleReportRefused,
)
from hodei_common.contracts.workers import WorkerReady, WorkerTerminating
from hodei_common.database import Conn
from hodei_common.lifecycle import SQL_DIR, events, queries
from hodei_common.lifecycle.events import Emit
from hodei_common.lifecycle.transitions import JOBS, WORKERS, Transition
from hodei_common.lifecycle.workers import WorkerRef

SQL = queries.load(SQL_DIR / "jobs.sql")
_JSON = msgspec.json.Encoder()

# The transition a FINISHED report's outcome makes.
FINISHING: dict[Outcome, Transition] = {
    Outcome.SUCCEEDED: JOBS["succeed"],
    Outcome.FAILED: JOBS["fail"],
    Outcome.TIMED_OUT: JOBS["time_out"],
    Outcome.CANCELLED: JOBS["cancel"],
}


@dataclass(frozen=True)
class NewJob:
    """One job to submit, made ready in its submitter's trace: its id and namespace, and its
    events encoded, naming the worker (if it gets one at once) by the stand-in ``picked``."""

    req: SubmitJob
    job_id: UUID
    namespace: str
    traceparent: str | None
    events: str
    picked: str


def new_job(req: SubmitJob, *, job_id: UUID, namespace: str, actor: str,
            assign_now: bool = False) -> NewJob:
    """``req`` as a job of ``namespace`` for ``submit_many``, in the caller's trace."""
    t, assigned = JOBS["submit"], JOBS["assign"]
    fields: dict[str, Any] = {
        "actor": actor, "job": job_id, "job_id": job_id, "attempt": 1, "namespace": namespace,
        "name": req.name, "provider": req.provider, "priority": req.priority,
        "timeout_s": req.timeout_s, "env_keys": sorted(req.env)}
    emits = [Emit(t, events.new(JobCreated, **fields))]
    # Which worker is known once the statement picked one: the events it may then record name
    # a stand-in id, made for this job alone, which the statement replaces with the worker's.
    picked = uuid4()
    if assign_now:
        emits += [
            Emit(t, events.new(JobCreated, **fields, worker_id=picked), step="submit_assigned"),
            Emit(assigned, events.new(JobAssigned, actor=actor, job=job_id, job_id=job_id,
                                      attempt=1, worker_id=picked))]
    return NewJob(req, job_id, namespace, tracing.traceparent(),
                  events.encode(emits, starts_trace=True), str(picked))


async def submit_many(conn: Conn, new: Sequence[NewJob], *, assign_now: bool = False
                      ) -> list[asyncpg.Record]:
    """New QUEUED jobs, in one statement: the row of each job inserted, in order. A job is
    left out when its provider is unknown or disabled or its id or its namespace's
    idempotency key is taken (by an earlier job of ``new`` too); ids must differ, and each
    job must come from ``new_job`` with the same ``assign_now`` (its events then hold the
    steps the statement records).

    With ``assign_now``, jobs that find idle workers are assigned to them in the same
    statement (see ``submit`` in jobs.sql): such a row has ``worker_id`` and ``assigned_at``,
    and says the worker's ``worker_mode`` and ``pool_short`` (its provider's warm pool has
    room to grow)."""
    if len({n.job_id for n in new}) != len(new):
        raise ValueError("jobs submitted together must have distinct ids")
    t, assigned, occupy = JOBS["submit"], JOBS["assign"], WORKERS["occupy"]
    reqs = [n.req for n in new]
    return await SQL["submit"].fetch(
        conn, job_ids=[n.job_id for n in new], namespaces=[n.namespace for n in new],
        names=[r.name for r in reqs], commands=[r.command for r in reqs],
        args=[_JSON.encode(r.args).decode() for r in reqs],
        envs=[_JSON.encode(r.env).decode() for r in reqs],
        timeouts=[r.timeout_s for r in reqs], providers=[r.provider for r in reqs],
        priorities=[r.priority for r in reqs], max_attempts=[r.max_attempts for r in reqs],
        idempotency_keys=[r.idempotency_key for r in reqs], cpus=[r.cpus for r in reqs],
        memory_bytes=[r.memory_bytes for r in reqs],
        traceparents=[n.traceparent for n in new], events=[n.events for n in new],
        picked=[n.picked for n in new], to_state=t.to_state, assign_now=assign_now,
        assign_to=assigned.to_state, occupy_from=occupy.fence, occupy_to=occupy.to_state)


async def submit(conn: Conn, req: SubmitJob, *, job_id: UUID, namespace: str, actor: str,
                 assign_now: bool = False) -> asyncpg.Record | None:
    """A new QUEUED job of ``namespace`` (its row); None when the provider is unknown or
    disabled or the id or the namespace's idempotency key is taken. ``submit_many`` for
    one job."""
    rows = await submit_many(conn, [new_job(req, job_id=job_id, namespace=namespace,
                                            actor=actor, assign_now=assign_now)],
                             assign_now=assign_now)
    return rows[0] if rows else None


async def cancel_queued(conn: Conn, job_id: UUID, attempt: int, *, actor: str
                        ) -> asyncpg.Record | None:
    """QUEUED -> CANCELLED (the job's row); None when it is not QUEUED."""
    t = JOBS["cancel_queued"]
    cancelled = events.new(JobCancelled, actor=actor, job=job_id, job_id=job_id,
                           attempt=attempt, reason="cancelled by request")
    return await SQL["cancel_queued"].fetchrow(
        conn, job_id=job_id, from_states=t.fence, to_state=t.to_state,
        events=events.encode([Emit(t, cancelled)]))


async def request_cancel(conn: Conn, job_id: UUID, attempt: int, worker_id: UUID | None, *,
                         actor: str) -> asyncpg.Record | None:
    """Mark an ASSIGNED/RUNNING job for cancellation (the job's row); None when it is not
    held by a worker, or the cancel was asked for before."""
    t = JOBS["request_cancel"]
    requested = events.new(JobCancelRequested, actor=actor, job=job_id, job_id=job_id,
                           attempt=attempt, worker_id=worker_id)
    return await SQL["request_cancel"].fetchrow(
        conn, job_id=job_id, from_states=t.fence, events=events.encode([Emit(t, requested)]))


async def assign(conn: Conn, pairs: Sequence[tuple[UUID, UUID, int]], *, actor: str
                 ) -> list[asyncpg.Record]:
    """Assign each (job, worker, attempt) pair, its worker made BUSY: one row per job
    assigned (id, attempt, worker_id, command, args, env, timeout_s, assigned_at,
    ``occupied``: how many workers the statement made BUSY)."""
    t, occupy = JOBS["assign"], WORKERS["occupy"]
    emits = [Emit(t, events.new(JobAssigned, actor=actor, job=job_id, job_id=job_id,
                                attempt=attempt, worker_id=worker_id), step=str(job_id))
             for job_id, worker_id, attempt in pairs]
    return await SQL["assign"].fetch(
        conn, job_ids=[p[0] for p in pairs], worker_ids=[p[1] for p in pairs],
        attempts=[p[2] for p in pairs], from_states=t.fence, to_state=t.to_state,
        occupy_from=occupy.fence, occupy_to=occupy.to_state, events=events.encode(emits))


def _progress(t: Transition, kind: type[JobAccepted] | type[JobStarted], report: StatusReport,
              actor: str, step: str) -> Emit:
    return Emit(t, events.new(kind, actor=actor, job=report.job_id, job_id=report.job_id,
                              attempt=report.attempt, worker_id=report.worker_id), step=step)


async def accept(conn: Conn, report: StatusReport, *, actor: str) -> asyncpg.Record | None:
    """The agent took its assignment (id, cancel_requested_at); None when the report does
    not match the job's attempt and worker, or was applied before."""
    t = JOBS["accept"]
    return await SQL["accept"].fetchrow(
        conn, job_id=report.job_id, attempt=report.attempt, worker_id=report.worker_id,
        at=report.at, from_states=t.fence,
        events=events.encode([_progress(t, JobAccepted, report, actor, "accept")]))


async def start(conn: Conn, report: StatusReport, *, actor: str) -> asyncpg.Record | None:
    """ASSIGNED -> RUNNING (id, cancel_requested_at); also accepted, when that report never
    came. None when the report does not match, or was applied before."""
    t = JOBS["start"]
    return await SQL["start"].fetchrow(
        conn, job_id=report.job_id, attempt=report.attempt, worker_id=report.worker_id,
        at=report.at, from_states=t.fence, to_state=t.to_state,
        events=events.encode([_progress(t, JobAccepted, report, actor, "accept"),
                              _progress(t, JobStarted, report, actor, "start")]))


async def finish(conn: Conn, report: StatusReport, outcome: Outcome, *, provider: str | None,
                 actor: str) -> asyncpg.Record | None:
    """End the job as its FINISHED report says, and in the same statement free or retire its
    worker (``provider``: the worker's; None: no such worker). Returns (id, namespace, the
    job's provider, created_at, started_at, completed_at, ``freed``, ``waiting``: whether a
    job of the provider was queued as the statement ran);
    None when the report does not match the job's attempt and worker, or was applied."""
    t = FINISHING[outcome]
    job = report.job_id
    end: Event
    if outcome is Outcome.CANCELLED:
        end = events.new(JobCancelled, actor=actor, job=job, job_id=job,
                         attempt=report.attempt, reason=report.error or "cancelled by request")
    else:
        end = events.new(t.event, actor=actor, job=job, job_id=job,
                         attempt=report.attempt, state=JobState(t.target),
                         exit_code=report.exit_code, error=report.error,
                         worker_id=report.worker_id, duration_s=report.duration_s)
    free, retire = WORKERS["free"], WORKERS["retire"]
    emits = [_progress(t, JobAccepted, report, actor, "accept"),
             _progress(t, JobStarted, report, actor, "start"),
             Emit(t, end, step="finish")]
    if provider is not None:
        worker: dict[str, Any] = {"worker_id": report.worker_id, "provider": provider}
        emits += [
            Emit(free, events.new(WorkerReady, actor=actor, job=job, **worker)),
            Emit(retire, events.new(WorkerTerminating, actor=actor, job=job, **worker,
                                    reason=report.leaving or "its job finished")),
        ]
    return await SQL["finish"].fetchrow(
        conn, job_id=job, attempt=report.attempt, worker_id=report.worker_id,
        from_states=t.fence, to_state=t.to_state, exit_code=report.exit_code,
        error=report.error, at=report.at, started_at=report.started_at,
        free_from=free.fence, free_to=free.to_state, retire_from=retire.fence,
        retire_to=retire.to_state,
        reuse_worker=report.leaving is None and outcome is not Outcome.CANCELLED,
        events=events.encode(emits))


async def abandon(conn: Conn, job_id: UUID, attempt: int, worker: WorkerRef, reason: str, *,
                  actor: str) -> bool:
    """ASSIGNED -> CANCELLED (``reason``) while no report says its agent took it, its worker
    retired; False once the agent did (it then cancels the job itself) or it moved on."""
    t, retire = JOBS["abandon"], WORKERS["retire"]
    cancelled = events.new(JobCancelled, actor=actor, job=job_id, job_id=job_id,
                           attempt=attempt, reason=reason)
    leaving = events.new(WorkerTerminating, actor=actor, job=job_id, worker_id=worker.id,
                         provider=worker.provider, reason=reason)
    return await SQL["abandon"].fetchrow(
        conn, job_id=job_id, attempt=attempt, worker_id=worker.id, error=reason,
        from_states=t.fence, to_state=t.to_state, retire_from=retire.fence,
        retire_to=retire.to_state,
        events=events.encode([Emit(t, cancelled), Emit(retire, leaving)])) is not None


async def refuse_stale_report(conn: Conn, report: StatusReport, current_attempt: int, *,
                              event_id: UUID, actor: str) -> bool:
    """Record, once (``event_id`` is derived from the report), that a report of an attempt
    the job has moved past was refused; False when it was recorded before."""
    t = JOBS["refuse_stale_report"]
    refused = events.new(
        StaleReportRefused, actor=actor, job=report.job_id, event_id=event_id,
        job_id=report.job_id, attempt=report.attempt, worker_id=report.worker_id,
        kind=report.kind.value, current_attempt=current_attempt)
    recorded = await SQL["refuse_stale_report"].fetchval(
        conn, job_id=report.job_id, event_id=event_id, from_states=t.fence,
        events=events.encode([Emit(t, refused)]))
    return bool(recorded)


@dataclass(frozen=True)
class LogArchive:
    """A stored archive of a job's log, as ``job_log_files`` records it."""

    job_id: UUID
    attempt: int
    storage_uri: str
    size_bytes: int
    entry_count: int
    sha256: str
    truncated: bool


async def record_log_archives(conn: Conn, archives: Sequence[LogArchive]) -> None:
    """The job_log_files rows of stored archives (a job at most once), and the truncation
    mark of each job whose log was cut, in one statement."""
    await SQL["record_log_archives"].execute(
        conn, job_ids=[a.job_id for a in archives], attempts=[a.attempt for a in archives],
        storage_uris=[a.storage_uri for a in archives],
        sizes=[a.size_bytes for a in archives], entry_counts=[a.entry_count for a in archives],
        sha256s=[a.sha256 for a in archives], truncated=[a.truncated for a in archives],
        from_states=JOBS["mark_log_truncated"].fence)
