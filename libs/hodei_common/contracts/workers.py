"""Worker and provisioning bounded context: states, worker and provider views."""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

import msgspec


class WorkerState(enum.StrEnum):
    """Where a worker is in its life; TERMINATED and FAILED are final."""

    CREATING = "CREATING"
    READY = "READY"
    BUSY = "BUSY"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    FAILED = "FAILED"


class WorkerMode(enum.StrEnum):
    """``ephemeral``: one job then destroyed; ``reusable``: jobs one after another."""

    EPHEMERAL = "ephemeral"
    REUSABLE = "reusable"


class Worker(msgspec.Struct, frozen=True, kw_only=True):
    """A worker as the API returns it. ``last_heartbeat`` None means never."""

    id: UUID
    state: WorkerState
    provider: str
    mode: WorkerMode
    provider_resource_id: str | None = None
    last_heartbeat: datetime | None = None
    current_job_id: UUID | None = None
    jobs_run: int = 0
    error: str | None = None
    created_at: datetime
    updated_at: datetime


class ProviderConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One provider's configuration row."""

    name: str
    kind: str
    enabled: bool
    max_workers: int
    worker_mode: WorkerMode
    min_idle: int
    image: str | None = None
    settings: dict[str, object] = {}
    created_at: datetime
    updated_at: datetime
