"""Scheduler settings (``HODEI_*``)."""

from __future__ import annotations

from pydantic import Field

from hodei_common.settings import Settings


class SchedulerSettings(Settings):
    """How often the safety pass runs, when an unanswered assignment is sent again, and the
    byte cap of each job's log (0: none) that assignments carry."""

    dispatch_interval_s: float = Field(default=0.5, gt=0)
    assignment_resend_s: float = Field(default=2.0, gt=0)
    log_max_bytes: int = Field(default=1 << 30, ge=0)
