"""Supervisor settings (``HODEI_*``)."""

from __future__ import annotations

from pydantic import Field

from hodei_common.settings import Settings


class SupervisorSettings(Settings):
    """How often the heartbeats gathered in memory are written to PostgreSQL."""

    heartbeat_flush_s: float = Field(default=1.0, gt=0)
