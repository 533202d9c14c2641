"""Requests and replies of the ``hodei-api`` micro service.

Every reply is either the endpoint's reply struct or an :class:`ErrorReply`, told apart by
the ``Nats-Service-Error-Code`` header the micro framework sets on errors.
"""

from __future__ import annotations

import enum
from typing import Annotated
from uuid import UUID

import msgspec

from hodei_common.contracts.events import DomainEvent
from hodei_common.contracts.jobs import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT_S,
    MAX_NAME_CHARS,
    Cpus,
    Job,
    JobState,
    MemoryBytes,
    PositiveSeconds,
)
from hodei_common.contracts.workers import ProviderConfig, Worker, WorkerMode, WorkerState

MAX_REQUEST_BYTES = 256 * 1024
MAX_LIST_LIMIT = 1000


class ErrorCode(enum.StrEnum):
    """Stable error codes; the HTTP-like number travels in the service error header."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    PERMISSION_DENIED = "permission_denied"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


ERROR_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.FAILED_PRECONDITION: 409,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True):
    """A structured error: a stable code and one human line. Never a stack trace."""

    code: ErrorCode
    message: str


class SubmitJob(msgspec.Struct, frozen=True, kw_only=True):
    """``jobs.submit``: queue a shell command in the namespace of the request's subject."""

    command: str
    name: Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)] = ""
    args: list[str] = []
    env: dict[str, str] = {}
    timeout_s: PositiveSeconds = DEFAULT_TIMEOUT_S
    provider: str = "local"
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = DEFAULT_MAX_ATTEMPTS
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    # Chosen by the client, so that it can listen to the job's log before the job exists;
    # submitting the same id again returns that job (an id already used by another is refused).
    id: UUID | None = None
    # Resource limits; None takes the provider's defaults. Local workers are not limited.
    cpus: Cpus | None = None
    memory_bytes: MemoryBytes | None = None


class SubmitJobReply(msgspec.Struct, frozen=True, kw_only=True):
    """The stored job; ``created`` is False when an idempotency key matched an existing job."""

    job: Job
    created: bool


class JobRef(msgspec.Struct, frozen=True, kw_only=True):
    """``jobs.cancel``, ``jobs.events``, ``jobs.explain``: one job of the request subject's
    namespace, by id (another namespace's job is not found)."""

    id: UUID


class GetJob(JobRef, frozen=True, kw_only=True):
    """``jobs.get``: one job by id, its env values withheld unless ``show_env`` (see
    :class:`~hodei_common.contracts.jobs.Job`). A plain :class:`JobRef` body decodes as one."""

    show_env: bool = False


class JobReply(msgspec.Struct, frozen=True, kw_only=True):
    """One job; its ``env`` holds values only when ``show_env`` asked for them."""

    job: Job


class ListJobs(msgspec.Struct, frozen=True, kw_only=True):
    """``jobs.list``: the jobs of the request subject's namespace, newest first, optionally
    one state."""

    state: JobState | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIST_LIMIT)] = 50


class JobList(msgspec.Struct, frozen=True, kw_only=True):
    """Jobs, newest first."""

    jobs: list[Job]


class CancelJobReply(msgspec.Struct, frozen=True, kw_only=True):
    """The job after the cancel request; ``cancelled`` is True when it ended at once."""

    job: Job
    cancelled: bool


class JobExplanation(msgspec.Struct, frozen=True, kw_only=True):
    """``jobs.explain``: where a job is, what it waits for, and what last went wrong.

    ``worker_*``: its worker (the one holding it, else one being made for it, else the last
    one that held it); ``heartbeat_age_s`` None means that worker never beat;
    ``worker_resource`` is its provider's resource id (None: not made yet), and
    ``worker_status`` what its provider last said of that resource (``pod ... Pending:
    ContainerCreating``), ``worker_status_age_s`` ago.
    ``last_failure``: the newest failed (or erring) saga step of the job or its workers,
    as ``saga/step: error``.
    """

    job: Job
    waiting_for: str
    worker_id: UUID | None = None
    worker_state: WorkerState | None = None
    heartbeat_age_s: float | None = None
    last_failure: str | None = None
    last_failure_age_s: float | None = None
    retries: int = 0
    worker_resource: str | None = None
    worker_status: str | None = None
    worker_status_age_s: float | None = None


class JobEvents(msgspec.Struct, frozen=True, kw_only=True):
    """A job's domain events, oldest first."""

    events: list[DomainEvent]


class ListWorkers(msgspec.Struct, frozen=True, kw_only=True):
    """``workers.list``: optionally one state."""

    state: WorkerState | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIST_LIMIT)] = 100


class WorkerList(msgspec.Struct, frozen=True, kw_only=True):
    """Workers, newest first."""

    workers: list[Worker]


class ListProviders(msgspec.Struct, frozen=True, kw_only=True):
    """``providers.list``."""


class UpdateProvider(msgspec.Struct, frozen=True, kw_only=True):
    """``providers.update``: change the given fields of one provider; None leaves a field be.

    ``settings`` changes the provider's settings document, whose keys are its kind's
    (``contracts.providers``: ``max_jobs``, ``idle_ttl_s``, ``cpus``, ``memory_bytes``, and
    a kind's own, such as Docker's ``network_mode``): a key given a value is set, a key
    given null is removed, a key left out stays. A document its kind does not accept is
    refused and nothing changes.
    """

    name: str
    enabled: bool | None = None
    worker_mode: WorkerMode | None = None
    max_workers: Annotated[int, msgspec.Meta(ge=0, le=10_000)] | None = None
    min_idle: Annotated[int, msgspec.Meta(ge=0, le=10_000)] | None = None
    image: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None
    settings: dict[str, object] = {}


class ProviderReply(msgspec.Struct, frozen=True, kw_only=True):
    """One provider configuration."""

    provider: ProviderConfig


class ProviderList(msgspec.Struct, frozen=True, kw_only=True):
    """Every provider configuration."""

    providers: list[ProviderConfig]
