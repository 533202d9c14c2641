"""The supervisor's metrics: queued jobs and live workers read at scrape time, lost workers
counted under a bounded reason, a requeued job not counted as finished."""

from __future__ import annotations

import pytest

from hodei_common.client import ApiClient
from hodei_common.contracts.api import SubmitJob
from hodei_common.runner import HodeiService
from hodei_common.testing import assert_eventually

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


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
