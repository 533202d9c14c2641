"""Settings of the API service (``HODEI_*`` plus ``HODEI_API_*``)."""

from __future__ import annotations

from pydantic import Field

from hodei_common.settings import Settings


class ApiSettings(Settings):
    """Everything a Hodei process needs, plus how many requests one replica works at once."""

    api_max_in_flight: int = Field(default=64, ge=1)
