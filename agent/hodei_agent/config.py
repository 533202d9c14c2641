"""Settings of the worker agent (``HODEI_*``), given to it by its provisioner."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from uuid import UUID

from pydantic import Field, SecretStr

from hodei_agent.jobuser import JobUser
from hodei_common.settings import Settings

AGENT_VERSION = "0.1.0"


class AgentSettings(Settings):
    """Where NATS is, who this worker is, its one-time token, and how to run and log jobs."""

    nats_url: str  # required: a worker never falls back to the embedded platform's dev file
    worker_id: UUID
    bootstrap_token: SecretStr  # SecretStr: never shown by repr() or in a log line
    # NATS credentials (creds file text) that allow the register request alone, when NATS
    # asks for credentials: the agent then registers its own key and gets its user.
    bootstrap_creds: SecretStr | None = None
    # Base directory for the per-job working directories; None means the system temp dir.
    worker_workdir: Path | None = None
    # "uid[:gid]" the job runs as (HODEI_AGENT_JOB_USER), set by the worker image: the agent
    # runs as another user, so the job cannot read its environment or signal it. None: the
    # job runs as the agent's own user (the local provider, trusted code only).
    agent_job_user: str | None = Field(default=None, pattern=r"^\d+(:\d+)?$")

    nats_connect_attempts: int = Field(default=10, ge=1)
    register_timeout_s: float = Field(default=10.0, gt=0)
    # How long to keep asking while nobody answers: the provisioner may still be starting.
    register_deadline_s: float = Field(default=30.0, gt=0)
    # Between SIGTERM and SIGKILL of a job's process group.
    kill_grace_s: float = Field(default=2.0, ge=0)
    # NATS unreachable this long (HODEI_AGENT_PLATFORM_LOST_S): the platform is gone, so
    # the agent ends its job and exits 1. Long enough for a restarted nats-server.
    agent_platform_lost_s: float = Field(default=60.0, gt=0)
    # What SIGTERM means (HODEI_AGENT_ON_SIGTERM). "cancel": the job is cancelled and
    # reported CANCELLED (someone stops this worker on purpose). "abandon": the job is ended
    # and NOT reported, so the platform sees its worker lost and runs it again elsewhere
    # (a pod's SIGTERM: the node drains, evicts or deletes it).
    agent_on_sigterm: Literal["cancel", "abandon"] = "cancel"
    publish_timeout_s: float = Field(default=5.0, gt=0)
    publish_attempts: int = Field(default=6, ge=1)
    # STARTED is reported this long after the start, unless the job ended by then: then its
    # FINISHED report says when it started (one report, one database write fewer).
    report_started_after_s: float = Field(default=0.02, ge=0)

    # A batch is sent when it holds this many lines or bytes, or this long after its first line.
    log_batch_lines: int = Field(default=500, ge=1)
    log_batch_bytes: int = Field(default=64 * 1024, ge=1024)
    log_linger_s: float = Field(default=0.003, ge=0)
    # Back-pressure: at most this many batches cut or in flight before reading stalls.
    log_max_in_flight: int = Field(default=4, ge=1)
    # A longer line is split into pieces of at most this many bytes.
    log_max_line_bytes: int = Field(default=64 * 1024, ge=256)

    def job_user(self) -> JobUser | None:
        """The user jobs run as, parsed; None to run them as the agent's own user."""
        return JobUser.parse(self.agent_job_user) if self.agent_job_user else None
