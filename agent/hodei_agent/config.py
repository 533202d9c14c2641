"""Settings of the worker agent (``HODEI_*``), given to it by its provisioner.

The agent reads them with msgspec, not pydantic-settings like the services: importing
pydantic and building a settings model took about 0.1 s of each worker's start, and an
agent starts for every ephemeral job. A variable is ``HODEI_`` + the field's name in upper
case; a bad value is one error line naming the variable, as for the services.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

from hodei_agent.jobuser import JobUser
from hodei_common.errors import ConfigError

AGENT_VERSION = "0.1.0"
ENV_PREFIX = "HODEI_"

Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
AtLeastOne = Annotated[int, Meta(ge=1)]


class Secret:
    """A secret setting: never shown by ``repr()`` or in a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


class AgentSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where NATS is, who this worker is, its one-time token, and how to run and log jobs."""

    nats_url: str  # required: a worker never falls back to the embedded platform's dev file
    worker_id: UUID
    bootstrap_token: Secret
    # NATS credentials (creds file text) that allow the register request alone, when NATS
    # asks for credentials: the agent then registers its own key and gets its user.
    bootstrap_creds: Secret | None = None
    # NATS credentials of its own (a creds file, HODEI_CREDS): only for an agent run by hand
    # against a NATS that asks for them; provisioners give bootstrap creds instead.
    creds: Path | None = None
    # Base directory for the per-job working directories; None means the system temp dir.
    worker_workdir: Path | None = None
    # "uid[:gid]" the job runs as (HODEI_AGENT_JOB_USER), set by the worker image: the agent
    # runs as another user, so the job cannot read its environment or signal it. None: the
    # job runs as the agent's own user (the local provider, trusted code only).
    agent_job_user: Annotated[str, Meta(pattern=r"^\d+(:\d+)?$")] | None = None
    log_level: str = "INFO"

    nats_connect_attempts: AtLeastOne = 10
    register_timeout_s: Positive = 10.0
    # How long to keep asking while nobody answers: the provisioner may still be starting.
    register_deadline_s: Positive = 30.0
    # Between SIGTERM and SIGKILL of a job's process group.
    kill_grace_s: NonNegative = 2.0
    # How long the last reports may take once the agent stops, and its NATS drain.
    drain_grace_s: Positive = 10.0
    # NATS unreachable this long (HODEI_AGENT_PLATFORM_LOST_S): the platform is gone, so
    # the agent ends its job and exits 1. Long enough for a restarted nats-server.
    agent_platform_lost_s: Positive = 60.0
    # What SIGTERM means (HODEI_AGENT_ON_SIGTERM). "cancel": the job is cancelled and
    # reported CANCELLED (someone stops this worker on purpose). "abandon": the job is ended
    # and NOT reported, so the platform sees its worker lost and runs it again elsewhere
    # (a pod's SIGTERM: the node drains, evicts or deletes it).
    agent_on_sigterm: Literal["cancel", "abandon"] = "cancel"
    publish_timeout_s: Positive = 5.0
    publish_attempts: AtLeastOne = 6
    # STARTED is reported this long after the start, unless the job ended by then: then its
    # FINISHED report says when it started (one report, one database write fewer).
    report_started_after_s: NonNegative = 0.02

    # A batch is sent when it holds this many lines or bytes, or this long after its first line.
    log_batch_lines: AtLeastOne = 500
    log_batch_bytes: Annotated[int, Meta(ge=1024)] = 64 * 1024
    log_linger_s: NonNegative = 0.003
    # Back-pressure: at most this many batches cut or in flight before reading stalls.
    log_max_in_flight: AtLeastOne = 4
    # A longer line is split into pieces of at most this many bytes.
    log_max_line_bytes: Annotated[int, Meta(ge=256)] = 64 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **overrides: Any) -> AgentSettings:
        """The settings from ``environ`` (default: this process's), ``overrides`` (by field
        name) taking precedence; a missing or bad value is one :class:`ConfigError` line
        naming its variable."""
        source = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            value = source.get(ENV_PREFIX + name.upper())
            if value is not None:
                raw[name] = value
        raw.update(overrides)
        try:
            return msgspec.convert(raw, cls, strict=False, dec_hook=_decode)
        except msgspec.ValidationError as e:
            raise ConfigError(_one_line(str(e))) from None

    @property
    def nats_user(self) -> str | None:
        return None  # never a NATS user and password: bootstrap creds, then a key of its own

    @property
    def nats_password(self) -> str | None:
        return None

    def resolved_nats_url(self) -> str:
        return self.nats_url

    def resolved_creds(self, identity: str) -> Path | None:
        return self.creds.expanduser() if self.creds is not None else None

    def job_user(self) -> JobUser | None:
        """The user jobs run as, parsed; None to run them as the agent's own user."""
        return JobUser.parse(self.agent_job_user) if self.agent_job_user else None


def _decode(kind: type, value: Any) -> Any:
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError


def _one_line(message: str) -> str:
    """msgspec's ``Expected `int` >= 1 - at `$.kill_grace_s``` as ``HODEI_KILL_GRACE_S:
    expected `int` >= 1``; a missing field as ``HODEI_WORKER_ID: not set``."""
    missing = "Object missing required field `"
    if message.startswith(missing):
        return f"{ENV_PREFIX}{message[len(missing):].rstrip('`').upper()}: not set"
    what, sep, where = message.rpartition(" - at `$.")
    if not sep:
        return message
    field = where.rstrip("`").split(".")[0].split("[")[0]
    return f"{ENV_PREFIX}{field.upper()}: {what[:1].lower()}{what[1:]}"
