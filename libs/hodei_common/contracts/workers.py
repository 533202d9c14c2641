"""Worker and provisioning bounded context: states, worker and provider views."""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

import msgspec

from hodei_common.contracts.events import Event


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

    id: UUID | None = None
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


# --- domain events --------------------------------------------------------------------
class WorkerEvent(Event, frozen=True, kw_only=True):
    """Fields every worker event carries."""

    worker_id: UUID
    provider: str


class ProvisionRequested(WorkerEvent, frozen=True, kw_only=True):
    """The scheduler wants a worker: its row exists, CREATING. Subject ``provision.requested``.

    ``job_id`` is the waiting job it is requested for (None: a warm-pool worker).
    """

    mode: WorkerMode = WorkerMode.EPHEMERAL
    job_id: UUID | None = None


class ProvisionFailed(WorkerEvent, frozen=True, kw_only=True):
    """The provider could not create the worker; the row is FAILED."""

    error: str


class WorkerCreated(WorkerEvent, frozen=True, kw_only=True):
    """The provider created the worker's resource (a pid, a container id, a pod name)."""

    provider_resource_id: str


class WorkerRegistered(WorkerEvent, frozen=True, kw_only=True):
    """The worker's agent exchanged its bootstrap token."""


class WorkerReady(WorkerEvent, frozen=True, kw_only=True):
    """The worker can take a job."""


class WorkerTerminating(WorkerEvent, frozen=True, kw_only=True):
    """The worker is done (or unwanted): the provisioner destroys its resource."""

    reason: str


class WorkerTerminated(WorkerEvent, frozen=True, kw_only=True):
    """The worker's resource is gone."""

    reason: str = ""


class WorkerFailed(WorkerEvent, frozen=True, kw_only=True):
    """The worker broke; its resource is destroyed. ``job_id``: the job it held, if any."""

    error: str
    job_id: UUID | None = None


class WorkerHeartbeatMissed(WorkerEvent, frozen=True, kw_only=True):
    """The worker has not beaten for ``silent_s`` (more than its grace): it is declared lost.
    ``last_heartbeat`` None: it never beat (then ``silent_s`` counts from registration)."""

    last_heartbeat: datetime | None = None
    silent_s: float


class WorkerStopOrdered(WorkerEvent, frozen=True, kw_only=True):
    """A worker that was declared dead (or is finished) was heard from again and told to
    stop. ``job_id``/``attempt``: what it said it was running."""

    state: WorkerState
    job_id: UUID | None = None
    attempt: int | None = None


class ProviderUpdated(Event, frozen=True, kw_only=True):
    """An operator changed a provider's configuration; ``changes`` holds the new values."""

    provider: str
    changes: dict[str, object]
