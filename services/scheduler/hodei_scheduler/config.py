"""Scheduler settings (``HODEI_*``)."""

from __future__ import annotations

from pydantic import Field

from hodei_common.settings import Settings


class SchedulerSettings(Settings):
    """How often the safety pass runs, and when an unanswered assignment is sent again."""

    dispatch_interval_s: float = Field(default=0.5, gt=0)
    assignment_resend_s: float = Field(default=2.0, gt=0)
