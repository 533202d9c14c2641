"""The platform's services (but the provisioner) with a supervisor on short limits; the test
plays the workers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from hodei_common import platform_settings
from hodei_common.client import ApiClient
from hodei_common.runner import HodeiService, share_metrics
from hodei_common.settings import Settings
from hodei_common.testing.services import running
from hodei_supervisor.config import SupervisorSettings
from hodei_supervisor.service import SupervisorService
from tests.scheduler.conftest import core_services

HEARTBEAT_S = 0.2


@pytest.fixture
def supervisor_settings(settings: Settings) -> SupervisorSettings:
    """Silence over 0.7 s loses a worker; other limits of a second or two."""
    return SupervisorSettings(
        **{**settings.model_dump(), "heartbeat_interval_s": HEARTBEAT_S},
        heartbeat_flush_s=0.1, supervisor_sweep_interval_s=0.1,
        supervisor_accept_timeout_s=1.0, supervisor_register_timeout_s=1.5,
        supervisor_timeout_grace_s=0.5, supervisor_cancel_resend_s=0.5)


@pytest.fixture
async def platform(
    settings: Settings, supervisor_settings: SupervisorSettings, pool: asyncpg.Pool,
) -> AsyncIterator[list[HodeiService]]:
    # The heartbeat interval is the platform's: recorded as `hodei migrate` does. The
    # services share one metrics registry, as in one process.
    async with pool.acquire() as conn:
        await platform_settings.record(conn, supervisor_settings)
    services = [*core_services(settings), SupervisorService(supervisor_settings)]
    share_metrics(services)
    async with running(services):
        yield services


@pytest.fixture
def api(platform: list[HodeiService], nc: NATS) -> ApiClient:
    return ApiClient(nc, timeout_s=5.0)
