"""Settings of the provisioner service (``HODEI_*`` plus ``HODEI_PROVISIONER_*``)."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field

from hodei_common.settings import Settings


def _default_agent_command() -> list[str]:
    return [sys.executable, "-m", "hodei_agent"]


class ProvisionerSettings(Settings):
    """Everything a Hodei process needs, plus how workers are made and told to behave.

    ``HODEI_PROVISIONER_AGENT_COMMAND`` is a JSON list, e.g. ``["hodei-agent"]``.
    """

    provisioner_token_ttl_s: float = Field(default=120.0, gt=0)
    provisioner_agent_command: list[str] = Field(
        default_factory=_default_agent_command, min_length=1
    )
    # With the default agent command, local agents are forked from an agent template that
    # imported the agent once (HODEI_PROVISIONER_AGENT_TEMPLATE; false: each agent is spawned
    # as a new Python, ~0.2 s of CPU more per worker).
    provisioner_agent_template: bool = True
    provisioner_agent_nats_url: str | None = None
    provisioner_workers_dir: Path | None = None
    provisioner_destroy_grace_s: float = Field(default=2.0, gt=0)
    provisioner_max_in_flight: int = Field(default=32, ge=1)
    # Seconds between reconciliation passes (one also runs at start).
    provisioner_reconcile_interval_s: float = Field(default=2.0, gt=0)
    # A signing key of the platform's NATS account (a seed file, HODEI_NATS_SIGNING_KEY): the
    # provisioner mints each agent's NATS user with it. Unset: NATS asks for no credentials.
    nats_signing_key: Path | None = None
    # The operator's seed file (HODEI_NATS_OPERATOR_KEY) and a system-account user's creds
    # (HODEI_NATS_SYSTEM_CREDS): with both, the provisioner revokes the NATS users of ended
    # (terminated or lost) workers' agents. Unset: their users stay valid until they expire.
    nats_operator_key: Path | None = None
    nats_system_creds: Path | None = None
    # The longest an agent's NATS user JWT lives (HODEI_PROVISIONER_AGENT_JWT_LIFETIME_S); its
    # agent renews it while the worker lives, from half its life on. An ended worker's user
    # stays in the account's revocations until its last JWT expires, so this bounds that list
    # (about 90 bytes per worker ended within it; nats-server takes a JWT of 1 MiB at most),
    # and it is how long a provisioner may be away before agents lose NATS.
    provisioner_agent_jwt_lifetime_s: float = Field(default=600.0, gt=0)
    # Past the deadline of the job a one-job worker was made for, how long its agent's JWT
    # still lives when that comes before the lifetime (HODEI_PROVISIONER_AGENT_JWT_GRACE_S):
    # the job's wait for its start, the supervisor's timeout grace, the kill grace, the last
    # reports and the drain.
    provisioner_agent_jwt_grace_s: float = Field(default=300.0, gt=0)
    # Seconds between checks that the revoked users are the ended workers' agents'.
    provisioner_revoke_interval_s: float = Field(default=2.0, gt=0)

    def agent_nats_url(self) -> str:
        """The NATS URL agents are given: the configured one, else the service's own."""
        return self.provisioner_agent_nats_url or self.resolved_nats_url()

    def workers_dir(self) -> Path:
        """Where local agents' stdout/stderr go: ``$HODEI_HOME/workers`` unless configured."""
        if self.provisioner_workers_dir is not None:
            return self.provisioner_workers_dir.expanduser()
        return self.home / "workers"
