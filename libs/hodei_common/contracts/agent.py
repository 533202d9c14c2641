"""What the worker agent and the platform say to each other.

* ``hodei.worker.register`` (request/reply): the agent's one-time token for its worker id.
* ``hodei.worker.<id>.renew`` (request/reply): a fresh NATS user JWT for a live worker's agent.
* ``worker.<id>.assign`` (JetStream ``WORKER_ASSIGN``): the job to run, fenced by attempt.
* ``worker.<id>.status`` (JetStream ``WORKER_STATUS``): accepted, started, finished.
* ``worker.heartbeat.<id>`` (core NATS): I am alive, running this job.
* ``worker.<id>.control`` (core NATS): cancel the running job, or stop.
"""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

import msgspec

from hodei_common.contracts.workers import WorkerMode

# With 3 missed beats as the supervisor's grace, a silent worker is lost within ~4 s.
DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
# The only capabilities a container's or pod's agent keeps (it runs as root, all others
# dropped) to run each job as the image's job user and clean up after it: SETUID and SETGID
# to switch to it, KILL to signal its processes, CHOWN to give it its working directory,
# DAC_OVERRIDE to remove what it left there (whatever the modes) and to make it the OOM
# killer's first choice (its /proc files are the job user's). The job gets none of them.
AGENT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "KILL", "SETGID", "SETUID")
# The worker image's job user (agent/Dockerfile), "uid:gid": a provider that starts the agent
# as root also tells it this (HODEI_AGENT_JOB_USER), so that no image left without it runs
# its jobs as root.
JOB_USER = "10001:10001"


class RegisterRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An agent presents the bootstrap token its provisioner gave it."""

    worker_id: UUID
    token: str
    hostname: str = ""
    pid: int | None = None
    agent_version: str = ""
    # The agent's own nkey (a user public key) when NATS asks for credentials: its user is
    # minted for this key, whose seed never leaves the agent.
    public_key: str | None = None


class RegisterReply(msgspec.Struct, frozen=True, kw_only=True):
    """The token was good (and is now spent): the agent may work."""

    worker_id: UUID
    mode: WorkerMode
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    max_jobs: int | None = None
    idle_ttl_s: float | None = None
    # The agent's NATS user JWT, bound to its ``public_key``: it reconnects with it.
    user_jwt: str | None = None


class RenewRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A registered agent asks for a fresh JWT for the key it registered; the worker is the
    one its subject names (the only one its permissions let it ask for)."""


class RenewReply(msgspec.Struct, frozen=True, kw_only=True):
    """A fresh user JWT for the agent's key, expiring no earlier than the job it holds."""

    user_jwt: str


class Assignment(msgspec.Struct, frozen=True, kw_only=True):
    """Run this job. A report must carry the same (job_id, attempt) to count."""

    job_id: UUID
    attempt: int
    worker_id: UUID
    namespace: str  # the job's: its log is written under it
    command: str
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    timeout_s: float
    assigned_at: datetime
    # Bytes of output the job's log keeps; past it the agent writes a truncation notice and
    # drops the rest. None: no cap.
    log_max_bytes: int | None = None


class StatusKind(enum.StrEnum):
    ACCEPTED = "accepted"
    STARTED = "started"
    FINISHED = "finished"


class Outcome(enum.StrEnum):
    """How a finished job ended, as the agent saw it."""

    SUCCEEDED = "succeeded"  # exit code 0
    FAILED = "failed"  # non-zero exit, or the command could not start (``error`` says why)
    TIMED_OUT = "timed_out"  # killed at its timeout
    CANCELLED = "cancelled"  # killed on a cancel order


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a job on its worker; ``Nats-Msg-Id`` is ``job:attempt:kind``.

    A FINISHED report carries ``started_at`` when the job started but its STARTED report was
    never sent (a job that ends within moments is reported once, not twice).
    """

    worker_id: UUID
    job_id: UUID
    attempt: int
    kind: StatusKind
    at: datetime
    outcome: Outcome | None = None
    exit_code: int | None = None
    error: str | None = None
    duration_s: float | None = None
    log_lines: int | None = None
    started_at: datetime | None = None
    # FINISHED: why the agent exits after this job (None: it waits for its next one).
    leaving: str | None = None


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """The agent is alive; ``job_id``/``attempt`` name what it runs, if anything."""

    worker_id: UUID
    at: datetime
    job_id: UUID | None = None
    attempt: int | None = None


class ControlAction(enum.StrEnum):
    CANCEL = "cancel"  # kill the named job's process group, report it CANCELLED
    STOP = "stop"  # finish nothing new; exit (cancelling a running job)


class Control(msgspec.Struct, frozen=True, kw_only=True):
    """An order to one worker."""

    action: ControlAction
    job_id: UUID | None = None
    attempt: int | None = None
    reason: str = ""
