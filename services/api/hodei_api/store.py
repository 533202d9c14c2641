"""SQL of the API service: what it reads of jobs, their events, workers and providers."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar
from uuid import UUID

import asyncpg
import msgspec

from hodei_common import tracing
from hodei_common.contracts.events import DomainEvent
from hodei_common.contracts.jobs import Job, JobState
from hodei_common.contracts.workers import ProviderConfig, Worker, WorkerState
from hodei_common.database import Conn

T = TypeVar("T", bound=msgspec.Struct)

_JOB_COLUMNS = """
    id, namespace, name, state, command, args, env, timeout_s, provider, priority, attempt,
    max_attempts, worker_id, exit_code, error, cpus, memory_bytes, idempotency_key,
    cancel_requested_at, not_before, created_at, started_at, completed_at, updated_at,
    log_truncated, traceparent
"""
_WORKER_COLUMNS = """
    id, state, provider, mode, provider_resource_id, last_heartbeat, current_job_id, jobs_run,
    error, created_at, updated_at
"""
_PROVIDER_COLUMNS = """
    id, name, kind, enabled, max_workers, worker_mode, min_idle, image, settings, created_at,
    updated_at
"""
_EVENT_COLUMNS = """
    id, seq, event_type, aggregate_type, aggregate_id, correlation_id, actor, payload,
    occurred_at, trace_id
"""

# Every job read is one namespace's: another namespace's job is not there, as an unknown id.
_JOB_BY_KEY = f"""
SELECT {_JOB_COLUMNS} FROM jobs WHERE namespace = $1 AND idempotency_key = $2
"""
_JOB_BY_ID = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1 AND namespace = $2"
_LOCK_JOB = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1 AND namespace = $2 FOR UPDATE"
# Ids are unique across namespaces: a submit may find its id taken by another's job.
_JOB_ID_TAKEN = "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1)"
_LIST_JOBS = f"""
SELECT {_JOB_COLUMNS} FROM jobs
WHERE namespace = $1
ORDER BY created_at DESC, id
LIMIT $2
"""
_LIST_JOBS_IN_STATE = f"""
SELECT {_JOB_COLUMNS} FROM jobs
WHERE namespace = $1 AND state = $2
ORDER BY created_at DESC, id
LIMIT $3
"""
# The job's own events and its workers' (they carry the job as correlation id).
_JOB_EVENTS = f"""
SELECT {_EVENT_COLUMNS} FROM domain_events
WHERE (aggregate_type = 'job' AND aggregate_id = $1) OR correlation_id = $1::text
ORDER BY seq
"""
_LIST_WORKERS = f"""
SELECT {_WORKER_COLUMNS} FROM workers
WHERE ($1::text IS NULL OR state = $1)
ORDER BY created_at DESC, id
LIMIT $2
"""
_PROVIDER = f"SELECT {_PROVIDER_COLUMNS} FROM provider_configs WHERE name = $1"
_LOCK_PROVIDER = _PROVIDER + " FOR UPDATE"
_LIST_PROVIDERS = f"SELECT {_PROVIDER_COLUMNS} FROM provider_configs ORDER BY name"
_PROVIDER_NAMES = "SELECT name FROM provider_configs ORDER BY name"


def _to(struct: type[T], row: asyncpg.Record) -> T:
    # Rows already hold UUID/datetime/dict values (jsonb is decoded by the pool).
    return msgspec.convert(dict(row), struct)


def _maybe(struct: type[T], row: asyncpg.Record | None) -> T | None:
    return None if row is None else _to(struct, row)


def _job(row: asyncpg.Record, *, show_env: bool = False) -> Job:
    # Every job the API returns is made here: env values (secrets) withheld, keys kept.
    fields = dict(row)
    env = fields.pop("env")
    fields["env_keys"] = sorted(env)
    fields["trace_id"] = tracing.trace_id_of(fields.pop("traceparent", None))
    if show_env:
        fields["env"] = env
    return msgspec.convert(fields, Job)


def job_from_row(row: asyncpg.Record | None, *, show_env: bool = False) -> Job | None:
    """A job struct from a row that holds the job columns; its env values are withheld
    unless ``show_env`` (only ``jobs.get`` asks), its env keys always there."""
    return None if row is None else _job(row, show_env=show_env)


async def job_by_idempotency_key(conn: Conn, namespace: str, key: str) -> Job | None:
    """The job submitted earlier with this key in this namespace, env values withheld."""
    return job_from_row(await conn.fetchrow(_JOB_BY_KEY, namespace, key))


async def get_job(conn: Conn, namespace: str, job_id: UUID, *, show_env: bool = False
                  ) -> Job | None:
    """One job of ``namespace`` by id, env values withheld unless ``show_env``."""
    return job_from_row(await conn.fetchrow(_JOB_BY_ID, job_id, namespace), show_env=show_env)


async def job_id_taken(conn: Conn, job_id: UUID) -> bool:
    """Whether a job of any namespace has this id."""
    return bool(await conn.fetchval(_JOB_ID_TAKEN, job_id))


async def lock_job(conn: Conn, namespace: str, job_id: UUID) -> Job | None:
    """One job of ``namespace`` by id (env values withheld), row-locked until the caller's
    transaction ends."""
    return job_from_row(await conn.fetchrow(_LOCK_JOB, job_id, namespace))


async def list_jobs(conn: Conn, namespace: str, *, state: JobState | None, limit: int
                    ) -> list[Job]:
    """The jobs of ``namespace`` newest first, optionally of one state, env values withheld."""
    if state is None:
        rows = await conn.fetch(_LIST_JOBS, namespace, limit)
    else:
        rows = await conn.fetch(_LIST_JOBS_IN_STATE, namespace, state, limit)
    return [_job(row) for row in rows]


async def job_events(conn: Conn, job_id: UUID) -> list[DomainEvent]:
    """A job's audit events and its workers', oldest first."""
    rows = await conn.fetch(_JOB_EVENTS, job_id)
    return [_to(DomainEvent, row) for row in rows]


async def list_workers(conn: Conn, *, state: WorkerState | None, limit: int) -> list[Worker]:
    """Workers newest first, optionally of one state."""
    rows = await conn.fetch(_LIST_WORKERS, state, limit)
    return [_to(Worker, row) for row in rows]


async def get_provider(conn: Conn, name: str) -> ProviderConfig | None:
    """One provider configuration by name."""
    return _maybe(ProviderConfig, await conn.fetchrow(_PROVIDER, name))


async def lock_provider(conn: Conn, name: str) -> ProviderConfig | None:
    """One provider configuration by name, row-locked until the caller's transaction ends."""
    return _maybe(ProviderConfig, await conn.fetchrow(_LOCK_PROVIDER, name))


def provider_from_row(row: asyncpg.Record | None) -> ProviderConfig | None:
    """A provider struct from a row that holds the provider columns."""
    return _maybe(ProviderConfig, row)


async def list_providers(conn: Conn) -> list[ProviderConfig]:
    """Every provider configuration, by name."""
    rows = await conn.fetch(_LIST_PROVIDERS)
    return [_to(ProviderConfig, row) for row in rows]


async def provider_names(conn: Conn) -> list[str]:
    """The names of every configured provider, sorted."""
    return [str(row["name"]) for row in await conn.fetch(_PROVIDER_NAMES)]


# --- jobs.explain --------------------------------------------------------------------------
# The job's worker: the one holding it, else one being made for it, else the last that held
# it (from its newest JobAssigned).
_EXPLAIN_WORKER = """
SELECT w.id, w.state, w.provider,
       extract(epoch FROM now() - w.last_heartbeat)::float8 AS heartbeat_age_s,
       extract(epoch FROM now() - w.created_at)::float8 AS age_s,
       w.provider_resource_id AS resource, w.resource_status AS status,
       extract(epoch FROM now() - w.resource_status_at)::float8 AS status_age_s
FROM workers w
WHERE w.id = $2
   OR (w.for_job_id = $1 AND w.state IN ('CREATING', 'READY'))
   OR w.id = (SELECT (payload->>'worker_id')::uuid FROM domain_events
              WHERE aggregate_id = $1 AND event_type = 'JobAssigned' ORDER BY seq DESC LIMIT 1)
ORDER BY w.id = $2 DESC, w.state IN ('CREATING', 'READY') DESC, w.created_at DESC
LIMIT 1
"""
# The newest failed (or erring) saga step of the job or of any worker made for or given it;
# of steps moved together, a FAILED one.
_LAST_FAILURE = """
SELECT g.saga_type, s.step_name, s.error, s.retry_count,
       extract(epoch FROM now() - s.updated_at)::float8 AS age_s
FROM sagas g JOIN saga_steps s ON s.saga_id = g.id
WHERE (s.state = 'FAILED' OR s.error IS NOT NULL)
  AND (g.aggregate_id = $1
       OR g.aggregate_id IN (SELECT id FROM workers WHERE for_job_id = $1)
       OR g.aggregate_id IN (SELECT (payload->>'worker_id')::uuid FROM domain_events
                             WHERE aggregate_id = $1 AND event_type = 'JobAssigned'))
ORDER BY s.updated_at DESC, s.state = 'FAILED' DESC
LIMIT 1
"""
_PROVIDER_ROOM = """
SELECT p.enabled, p.max_workers,
       (SELECT count(*) FROM workers w WHERE w.provider = p.name
          AND w.state IN ('CREATING', 'READY', 'BUSY', 'TERMINATING'))::int AS active,
       (SELECT count(*) FROM jobs q WHERE q.provider = p.name AND q.state = 'QUEUED'
          AND (q.priority > $2 OR (q.priority = $2 AND q.queued_at < $3)))::int AS ahead
FROM provider_configs p WHERE p.name = $1
"""
_JOB_TIMING = """
SELECT extract(epoch FROM not_before - now())::float8 AS backoff_left_s,
       extract(epoch FROM now() - coalesce(assigned_at, now()))::float8 AS assigned_s,
       extract(epoch FROM now() - coalesce(started_at, now()))::float8 AS running_s,
       priority, queued_at
FROM jobs WHERE id = $1
"""


class ExplainedWorker(msgspec.Struct, frozen=True, kw_only=True):
    """The worker a job's explanation speaks of; ``heartbeat_age_s`` None: it never beat;
    ``status``: its provider's last word on its resource, said ``status_age_s`` ago."""

    id: UUID
    state: WorkerState
    provider: str
    heartbeat_age_s: float | None
    age_s: float
    resource: str | None
    status: str | None
    status_age_s: float | None


class LastFailure(msgspec.Struct, frozen=True, kw_only=True):
    """A failed (or erring) saga step."""

    saga_type: str
    step_name: str
    error: str | None
    retry_count: int
    age_s: float


class ProviderRoom(msgspec.Struct, frozen=True, kw_only=True):
    """A provider's capacity, as seen by a queued job: live workers, and jobs ahead of it."""

    enabled: bool
    max_workers: int
    active: int
    ahead: int


class JobTiming(msgspec.Struct, frozen=True, kw_only=True):
    """How long a job has been where it is; ``backoff_left_s`` None: no backoff."""

    backoff_left_s: float | None
    assigned_s: float
    running_s: float
    priority: int
    queued_at: datetime


async def explained_worker(conn: Conn, job_id: UUID, worker_id: UUID | None
                           ) -> ExplainedWorker | None:
    """The job's worker: holding it, else being made for it, else the last that held it."""
    return _maybe(ExplainedWorker, await conn.fetchrow(_EXPLAIN_WORKER, job_id, worker_id))


async def last_failure(conn: Conn, job_id: UUID) -> LastFailure | None:
    """The newest failed saga step of the job or of its workers."""
    return _maybe(LastFailure, await conn.fetchrow(_LAST_FAILURE, job_id))


async def provider_room(conn: Conn, name: str, priority: int, queued_at: datetime
                        ) -> ProviderRoom | None:
    """A provider's live workers, and its queued jobs ahead of one of this priority and age."""
    return _maybe(ProviderRoom, await conn.fetchrow(_PROVIDER_ROOM, name, priority, queued_at))


async def job_timing(conn: Conn, job_id: UUID) -> JobTiming | None:
    """A job's backoff left, and how long it has been assigned and running."""
    return _maybe(JobTiming, await conn.fetchrow(_JOB_TIMING, job_id))
