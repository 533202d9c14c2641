"""SQL of the API service: what it reads of jobs, their events, workers and providers."""

from __future__ import annotations

from typing import TypeVar
from uuid import UUID

import asyncpg
import msgspec

from hodei_common.contracts.events import DomainEvent
from hodei_common.contracts.jobs import Job, JobState
from hodei_common.contracts.workers import ProviderConfig, Worker, WorkerState
from hodei_common.database import Conn

T = TypeVar("T", bound=msgspec.Struct)

_JOB_COLUMNS = """
    id, namespace, name, state, command, args, env, timeout_s, provider, priority, attempt,
    max_attempts, worker_id, exit_code, error, cpus, memory_bytes, idempotency_key,
    cancel_requested_at, not_before, created_at, started_at, completed_at, updated_at,
    log_truncated
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

_JOB_BY_KEY = f"""
SELECT {_JOB_COLUMNS} FROM jobs WHERE namespace = $1 AND idempotency_key = $2
"""
_JOB_BY_ID = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1"
_LOCK_JOB = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE"
_LIST_JOBS = f"""
SELECT {_JOB_COLUMNS} FROM jobs
WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR namespace = $2)
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


def job_from_row(row: asyncpg.Record | None) -> Job | None:
    """A job struct from a row that holds the job columns."""
    return _maybe(Job, row)


async def job_by_idempotency_key(conn: Conn, namespace: str, key: str) -> Job | None:
    """The job submitted earlier with this key in this namespace."""
    return _maybe(Job, await conn.fetchrow(_JOB_BY_KEY, namespace, key))


async def get_job(conn: Conn, job_id: UUID) -> Job | None:
    """One job by id."""
    return _maybe(Job, await conn.fetchrow(_JOB_BY_ID, job_id))


async def lock_job(conn: Conn, job_id: UUID) -> Job | None:
    """One job by id, row-locked until the caller's transaction ends."""
    return _maybe(Job, await conn.fetchrow(_LOCK_JOB, job_id))


async def list_jobs(
    conn: Conn, *, state: JobState | None, namespace: str | None, limit: int
) -> list[Job]:
    """Jobs newest first, optionally of one state and one namespace."""
    rows = await conn.fetch(_LIST_JOBS, state, namespace, limit)
    return [_to(Job, row) for row in rows]


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
