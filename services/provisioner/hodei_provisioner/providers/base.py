"""The one interface every provider implements, and what it is given to create a worker."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar
from uuid import UUID

from hodei_common.contracts.providers import ProviderSettings
from hodei_common.contracts.workers import WorkerMode
from hodei_common.errors import HodeiError

# The labels every provider puts on its resources (containers, pods): only resources with
# ``hodei.managed=true`` are ever touched, and only those of this platform's provider row.
LABEL_MANAGED = "hodei.managed"
LABEL_WORKER = "hodei.worker_id"
LABEL_JOB = "hodei.job_id"
LABEL_PROVIDER = "hodei.provider"
LABEL_PROVIDER_ID = "hodei.provider_id"
# What a resource killed for memory is said to be (Docker's State.OOMKilled, a pod's reason).
OOM_KILLED = "OOMKilled"


class ProviderError(HodeiError):
    """A provider could not do what it was asked; the message is one line, with no secret."""


# A WorkerSpec's secrets by their short name (a Kubernetes Secret's keys), as the agent's
# environment names them.
SECRET_ENV = {"token": "HODEI_BOOTSTRAP_TOKEN", "creds": "HODEI_BOOTSTRAP_CREDS"}


class CannotStart(ProviderError):
    """The worker can never start, nor could another like it (its image does not exist):
    the job it was made for fails at once instead of waiting for worker after worker."""


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """Everything a provider needs to start one worker's agent."""

    worker_id: UUID
    # The one-time bootstrap token: handed to the agent only, never logged (hidden from repr).
    token: str = field(repr=False)
    nats_url: str = field(repr=False)  # may carry credentials
    mode: WorkerMode
    provider: str  # the provider_configs name the worker belongs to
    # The provider_configs row's id: resources are labelled with it and listed by it.
    scope: str = ""
    image: str | None = None
    # The provider's settings as its kind's struct (contracts.providers.SETTINGS_BY_KIND).
    settings: ProviderSettings = field(default_factory=ProviderSettings)
    job_id: UUID | None = None  # the job the worker is requested for, if any
    # An ephemeral worker's job's timeout: its resource need not outlive it by much.
    job_timeout_s: float | None = None
    cpus: float | None = None  # limits (the job's, else the provider's); None: unlimited
    memory_bytes: int | None = None
    # The NATS credentials (creds file text) the agent registers with, when NATS asks for
    # credentials: they allow that request alone, and expire with the token.
    bootstrap_creds: str | None = field(default=None, repr=False)
    # The job's trace context for the agent's environment (TRACEPARENT, BAGGAGE), so the
    # agent's registration joins the trace of the job it was made for.
    trace_env: Mapping[str, str] = field(default_factory=dict)

    def secrets(self) -> dict[str, str]:
        """The agent's secret environment: its one-time token and bootstrap credentials."""
        found = {SECRET_ENV["token"]: self.token}
        if self.bootstrap_creds is not None:
            found[SECRET_ENV["creds"]] = self.bootstrap_creds
        return found

    def redact(self, text: str) -> str:
        """``text`` (a provider's error) with the agent's secrets, should it quote them,
        replaced."""
        for value in filter(None, (self.token, self.bootstrap_creds)):
            text = text.replace(value, "<secret>")
        return text


class Verdict(enum.Enum):
    """What a provider saw happen to a worker's resource, and what the platform does."""

    PROGRESS = "progress"  # how its start goes (pod Pending: ContainerCreating): recorded
    CANNOT_START = "cannot_start"  # it never will: the worker and its queued job fail
    LOST = "lost"  # taken away (evicted, deleted): the worker is lost, its job requeued
    ENDED = "ended"  # its agent exited (with ``exit_code``)
    TIMED_OUT = "timed_out"  # killed at its deadline: the job it held timed out


@dataclass(frozen=True, kw_only=True)
class News:
    """A change of a worker's resource, told by its provider the moment it sees it."""

    worker_id: UUID
    verdict: Verdict
    reason: str  # one line: the provider's words (``pod ... Pending: ContainerCreating``)
    exit_code: int | None = None  # ENDED
    oom_killed: bool = False  # ENDED: out of memory

    def __post_init__(self) -> None:
        if self.verdict is Verdict.ENDED and self.exit_code is None:
            raise ValueError("an ENDED resource has an exit code")


@dataclass(frozen=True, kw_only=True)
class Resource:
    """A resource a provider found: whose it is, and if it has ended, how."""

    resource_id: str
    worker_id: UUID | None  # None: its label is missing or garbled
    alive: bool
    exit_code: int | None = None
    oom_killed: bool = False
    ended_at: datetime | None = None
    reason: str | None = None  # why it ended or stopped, in the provider's words


class Provider(ABC):
    """Creates and destroys the resource (process, container, pod) behind a worker.

    A resource id is whatever the provider needs to find the resource again. Every method
    is given the worker id too, so a provider can check a resource really is that worker's
    before touching it (a pid may have been reused, a container renamed).
    """

    kind: ClassVar[str]
    noun: ClassVar[str] = "resource"  # what a resource is called in messages: "its pod"

    @abstractmethod
    async def create(self, spec: WorkerSpec) -> str:
        """Start the worker's agent; return the resource id. Raise on failure
        (:class:`CannotStart` when no worker like it could ever start)."""

    @abstractmethod
    async def destroy(self, resource_id: str, *, worker_id: UUID,
                      settings: ProviderSettings | None = None) -> None:
        """Stop and remove the resource. Idempotent: a resource already gone is success.
        ``settings``: the provider's current ones (where its cluster is), when known."""

    @abstractmethod
    async def exists(self, resource_id: str, *, worker_id: UUID,
                     settings: ProviderSettings | None = None) -> bool:
        """Whether the worker's resource is still there (alive)."""

    def describe(self, resource_id: str) -> str | None:
        """One line for the worker's resource status once it is created (``hodei job
        explain`` and the status line of ``hodei job run`` show it while a job waits); None
        for a provider whose own news says more, and may already have been noted."""
        return f"{self.kind} resource {resource_id} created"

    async def resources(self, scope: str, settings: ProviderSettings | None = None
                        ) -> list[Resource] | None:
        """Every resource this provider made for ``scope`` (a provider_configs id), alive or
        ended; None when the provider cannot list its resources (nothing is reconciled)."""
        return None

    def on_news(self, callback: Callable[[News], None]) -> None:  # noqa: B027
        """Have ``callback`` called (on the event loop) the moment the provider sees a
        resource change; one that cannot tell at once (Docker: reconciliation finds it)
        never calls it."""

    async def start(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Get ready to make workers as the service starts (without waiting on anything
        slow: the first ``create`` may wait instead)."""

    async def close(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Stop watching resources when the service stops; never destroys any."""
