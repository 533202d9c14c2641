"""Logs service settings (``HODEI_*``)."""

from __future__ import annotations

from pydantic import Field

from hodei_common.settings import Settings

DAY_S = 24 * 3600.0


class LogsSettings(Settings):
    """How long archived logs are kept, and how often old ones are looked for."""

    # 0 keeps archives for ever.
    log_archive_max_age_s: float = Field(default=90 * DAY_S, ge=0)
    log_archive_sweep_s: float = Field(default=60.0, gt=0)
