"""Settings of the API service (``HODEI_*`` plus ``HODEI_API_*``)."""

from __future__ import annotations

from pydantic import Field

from hodei_common.settings import Settings


class ApiSettings(Settings):
    """Everything a Hodei process needs, plus how many requests one replica works at once and
    whether a submitted job that finds an idle worker goes to it at once."""

    api_max_in_flight: int = Field(default=64, ge=1)
    # On: a job submitted while a READY worker that fits it is idle (and no job it fits
    # waits) is assigned to it in the submit's own statement and sent by the api, without a
    # dispatch pass. Off: every job waits QUEUED for the scheduler.
    api_assign_at_submit: bool = True
