"""The supervisor's metrics: queued jobs and live workers read at scrape time, lost workers
counted under a bounded reason, a requeued job not counted as finished."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from hodei_common import platform_settings
from hodei_common.client import ApiClient
from hodei_common.contracts.api import SubmitJob
from hodei_common.runner import HodeiService, share_metrics
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_common.testing.services import running
from hodei_supervisor.config import SupervisorSettings
from hodei_supervisor.service import SupervisorService
from tests.scheduler.conftest import core_services

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


@pytest.fixture
async def platform(
    settings: Settings, supervisor_settings: SupervisorSettings, pool: asyncpg.Pool,
) -> AsyncIterator[list[HodeiService]]:
    """The conftest's platform, its services sharing one registry as in one process."""
    async with pool.acquire() as conn:
        await platform_settings.record(conn, supervisor_settings)
    services = [*core_services(settings), SupervisorService(supervisor_settings)]
    share_metrics(services)
    async with running(services):
        yield services


async def test_a_worker_that_never_registers_is_counted_lost_and_the_gauges_follow(
    platform: list[HodeiService], api: ApiClient
) -> None:
    supervisor = platform[-1]
    metrics = supervisor.metrics

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    await api.submit(SubmitJob(command="echo hi"))

    async def one_queued_one_creating() -> bool:
        await supervisor.refresh_metrics()
        return (sample("hodei_jobs_queued"),
                sample("hodei_workers", provider="local", state="CREATING"),
                sample("hodei_workers", provider="local", state="BUSY")) == (1, 1, 0)

    await assert_eventually(one_queued_one_creating, within_s=5)
    # Nobody plays the provisioner: the worker never registers (limit 1.5 s).
    await assert_eventually(
        lambda: sample("hodei_workers_lost_total", reason="not_registered") == 1, within_s=10)
    assert sample("hodei_workers_lost_total", reason="heartbeat") is None
    assert sample("hodei_jobs_finished_total", provider="local", state="FAILED") is None
