"""Supervisor settings (``HODEI_*``)."""

from __future__ import annotations

from pydantic import Field

from hodei_common.settings import Settings


class SupervisorSettings(Settings):
    """How beats are recorded, and when a worker or job counts as lost or stuck."""

    heartbeat_flush_s: float = Field(default=0.5, gt=0)
    # A READY/BUSY worker silent for missed_beats heartbeat intervals (the platform's, see
    # silence_limit_s) plus one flush is lost.
    heartbeat_missed_beats: int = Field(default=3, ge=1)
    supervisor_sweep_interval_s: float = Field(default=0.5, gt=0)
    # An ASSIGNED job whose agent never reported taking it is requeued after this.
    supervisor_accept_timeout_s: float = Field(default=10.0, gt=0)
    # A CREATING worker that never registered is given up (destroyed) after this.
    supervisor_register_timeout_s: float = Field(default=60.0, gt=0)
    # A RUNNING job is TIMED_OUT this long after its own timeout when no result came.
    supervisor_timeout_grace_s: float = Field(default=15.0, gt=0)
    # A cancel order still unobeyed after this is sent again (and again, this often).
    supervisor_cancel_resend_s: float = Field(default=2.0, gt=0)

    def silence_limit_s(self, heartbeat_interval_s: float) -> float:
        """How long a worker may go unheard before it is declared lost, agents beating every
        ``heartbeat_interval_s`` (the platform's, which agents are told: not this service's
        own ``heartbeat_interval_s``)."""
        return self.heartbeat_missed_beats * heartbeat_interval_s + self.heartbeat_flush_s
