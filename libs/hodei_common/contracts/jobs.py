"""Job bounded context: states, the job view and the job domain events."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec

from hodei_common.contracts.events import Event

MAX_COMMAND_BYTES = 64 * 1024
MAX_NAME_CHARS = 200
MAX_ENV_ENTRIES = 256
MAX_TIMEOUT_S = 7 * 24 * 3600.0
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_MAX_ATTEMPTS = 3
# Resource limits a job may ask for (enforced by providers that can: Docker).
MIN_CPUS = 0.01
MAX_CPUS = 1024.0
# The agent runs inside the same limit and needs about 40 MiB of it.
MIN_MEMORY_BYTES = 64 * 1024 * 1024
MAX_MEMORY_BYTES = 1024**4


class JobState(enum.StrEnum):
    """Where a job is in its life; the last four are terminal."""

    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


TERMINAL_JOB_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_S)]
Cpus = Annotated[float, msgspec.Meta(ge=MIN_CPUS, le=MAX_CPUS)]
MemoryBytes = Annotated[int, msgspec.Meta(ge=MIN_MEMORY_BYTES, le=MAX_MEMORY_BYTES)]


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A job as the API returns it.

    Env values may be secrets, so replies withhold them: ``env_keys`` (sorted) always names
    the job's variables, and ``env`` is empty except in a ``jobs.get`` reply to a request
    with ``show_env``, where it holds every name and value. Readers that need only the
    names use ``env_keys``; the agent gets the values in its ``Assignment``, never from here.
    """

    id: UUID
    namespace: str
    name: str
    state: JobState
    command: str
    args: list[str]
    env: dict[str, str] = {}  # empty unless asked for: see above
    env_keys: list[str] = []
    timeout_s: float
    provider: str
    priority: int
    attempt: int
    max_attempts: int
    worker_id: UUID | None = None
    exit_code: int | None = None
    error: str | None = None
    cpus: float | None = None  # None: the provider's default
    memory_bytes: int | None = None
    idempotency_key: str | None = None
    cancel_requested_at: datetime | None = None
    not_before: datetime | None = None  # a requeued job waits until then
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime
    # Its output passed the log's byte cap: the log ends with a truncation notice.
    log_truncated: bool = False
    # The trace (32 hex digits) every step of the job is recorded in.
    trace_id: str | None = None


# --- domain events --------------------------------------------------------------------
class JobEvent(Event, frozen=True, kw_only=True):
    """Fields every job event carries; ``attempt`` fences reports from older attempts."""

    job_id: UUID
    attempt: int


class JobCreated(JobEvent, frozen=True, kw_only=True):
    """A job was accepted and stored: QUEUED, or, when it found an idle worker, assigned to it
    at once (``worker_id``; JobAssigned follows). Env values are secrets: only keys travel."""

    namespace: str
    name: str
    provider: str
    priority: int
    timeout_s: float
    env_keys: list[str] = msgspec.field(default_factory=list)
    worker_id: UUID | None = None


class JobCancelRequested(JobEvent, frozen=True, kw_only=True):
    """Cancellation of a job that already left the queue was asked for."""

    worker_id: UUID | None = None


class JobCancelled(JobEvent, frozen=True, kw_only=True):
    """A job ended CANCELLED."""

    reason: str = ""


class JobAssigned(JobEvent, frozen=True, kw_only=True):
    """A QUEUED job was given to a READY worker."""

    worker_id: UUID


class JobAccepted(JobEvent, frozen=True, kw_only=True):
    """The worker's agent took the assignment."""

    worker_id: UUID


class JobStarted(JobEvent, frozen=True, kw_only=True):
    """The job's command is running."""

    worker_id: UUID


class JobFinished(JobEvent, frozen=True, kw_only=True):
    """Fields of every terminal job event."""

    state: JobState
    exit_code: int | None = None
    error: str | None = None
    worker_id: UUID | None = None
    duration_s: float | None = None


class JobSucceeded(JobFinished, frozen=True, kw_only=True):
    """The command exited 0."""


class JobFailed(JobFinished, frozen=True, kw_only=True):
    """The command exited non-zero, could not start, or its worker was lost."""


class JobTimedOut(JobFinished, frozen=True, kw_only=True):
    """The command ran past its timeout and was killed (or its worker never said so)."""


class JobRequeued(JobEvent, frozen=True, kw_only=True):
    """The job's worker was lost: it waits QUEUED again as ``attempt`` (the old one + 1),
    not dispatched before ``not_before``."""

    previous_worker_id: UUID | None = None
    reason: str
    backoff_s: float
    not_before: datetime


class StaleReportRefused(JobEvent, frozen=True, kw_only=True):
    """A worker reported on an attempt that is no longer the job's (``attempt`` is the
    reported one): nothing changed, and the worker was told to stop if it was declared dead."""

    worker_id: UUID
    kind: str
    current_attempt: int
