"""Helpers shared by the API tests."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import asyncpg

from hodei_common.contracts import subjects
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE

TABLES = ("jobs", "outbox_events", "domain_events")


async def row_counts(pool: asyncpg.Pool) -> dict[str, int]:
    """How many rows each table a write touches holds."""
    return {table: await pool.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}


def job(command: str = "echo hello", **fields: Any) -> SubmitJob:
    """A valid submit request, with ``fields`` overridden."""
    return SubmitJob(command=command, **fields)


def jobs_subject(endpoint: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The subject of a job endpoint (``subjects.JOBS_GET``) in ``namespace``."""
    return subjects.api_ns(namespace, endpoint)


async def idle_worker(pool: asyncpg.Pool, *, mode: str = "reusable", cpus: float | None = None,
                      for_job_id: UUID | None = None) -> UUID:
    """A READY worker of the local provider, as the provisioner leaves one."""
    worker_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO workers (id, provider, state, mode, cpus, for_job_id, idle_since) "
        "VALUES ($1, 'local', 'READY', $2, $3, $4, now())", worker_id, mode, cpus, for_job_id)
    return worker_id
