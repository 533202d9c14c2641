"""Each metric moves when its event happens, once, in the registry the services share: the
API's submits, cancels and requests, the scheduler's finished jobs and log lines, the
consumers' backlogs and the outbox's (real services, NATS and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Outcome, StatusKind, StatusReport
from hodei_common.contracts.api import SubmitJob
from hodei_common.database import LOCK_CLASS, LOCK_OUTBOX_RELAY
from hodei_common.errors import HodeiError
from hodei_common.metrics import Metrics
from hodei_common.runner import HodeiService, share_metrics
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_common.testing.services import running
from tests.scheduler.conftest import core_services
from tests.scheduler.test_scheduler import assigned_job, job_state

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


@pytest.fixture
async def core(settings: Settings) -> AsyncIterator[list[HodeiService]]:
    """api, relay, scheduler and logs sharing one registry, as in one process."""
    services = core_services(settings)
    share_metrics(services)
    async with running(services):
        yield services


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def finished(js: JetStreamContext, worker_id: uuid.UUID, job_id: uuid.UUID,
                   lines: int) -> None:
    """Play the agent: the job's only report, sent twice (a redelivery)."""
    now = datetime.now(UTC)
    body = StatusReport(worker_id=worker_id, job_id=job_id, attempt=1,
                        kind=StatusKind.FINISHED, at=now, outcome=Outcome.SUCCEEDED,
                        exit_code=0, started_at=now, log_lines=lines)
    for _ in range(2):
        await js.publish(subjects.worker_status(worker_id), msgspec.json.encode(body))


async def _stream_applied(js: JetStreamContext) -> bool:
    """Both copies of the report were handled (the second one changed nothing)."""
    info = await js.consumer_info(subjects.WORKER_STATUS_STREAM,
                                  subjects.SCHEDULER_STATUS_CONSUMER)
    return (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_a_job_run_to_its_end_is_counted_once_at_each_step(
    core: list[HodeiService], api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    metrics = core[0].metrics
    job, worker_id = await assigned_job(api, pool, "echo hi")
    assert value(metrics, "hodei_jobs_submitted_total", provider="local") == 1
    assert value(metrics, "hodei_api_requests_total", endpoint="jobs_submit", code="ok") == 1
    assert value(metrics, "hodei_api_request_seconds_count", endpoint="jobs_submit") == 1

    await finished(js, worker_id, job.id, lines=7)
    await assert_eventually(lambda: value(
        metrics, "hodei_jobs_finished_total", provider="local", state="SUCCEEDED") == 1)
    assert await job_state(pool, job.id) == "SUCCEEDED"
    await assert_eventually(lambda: _stream_applied(js), within_s=5)
    assert value(metrics, "hodei_log_lines_total") == 7  # the redelivery counted nothing
    assert value(metrics, "hodei_jobs_finished_total", provider="local",
                 state="SUCCEEDED") == 1
    assert value(metrics, "hodei_job_queue_wait_seconds_count") == 1
    assert value(metrics, "hodei_job_run_seconds_count") == 1


async def test_a_refused_request_is_counted_under_its_error_code(
    core: list[HodeiService], api: ApiClient
) -> None:
    with pytest.raises(HodeiError):
        await api.submit(SubmitJob(command="echo hi", timeout_s=-1))
    metrics = core[0].metrics
    assert value(metrics, "hodei_api_requests_total", endpoint="jobs_submit",
                 code="invalid_argument") == 1
    assert value(metrics, "hodei_jobs_submitted_total", provider="local") == 0


async def test_a_queued_job_cancelled_is_counted_finished_cancelled(
    core: list[HodeiService], api: ApiClient
) -> None:
    for service in core:
        if service.name == "scheduler":
            await service.stop()  # the job stays QUEUED
    job = (await api.submit(SubmitJob(command="echo hi"))).job
    assert (await api.cancel(job.id)).cancelled
    assert value(core[0].metrics, "hodei_jobs_finished_total", provider="local",
                 state="CANCELLED") == 1
    assert value(core[0].metrics, "hodei_job_queue_wait_seconds_count") == 0


async def test_consumer_backlogs_and_the_outbox_are_read_at_scrape_time(
    core: list[HodeiService], api: ApiClient, pool: asyncpg.Pool
) -> None:
    metrics = core[0].metrics
    relay, scheduler = core[1], core[2]
    async with pool.acquire() as holder:
        # Hold the relay's turn: what the API writes stays in the outbox.
        await holder.execute("SELECT pg_advisory_lock($1, $2)", LOCK_CLASS, LOCK_OUTBOX_RELAY)
        try:
            await api.submit(SubmitJob(command="echo hi"))
            await relay.refresh_metrics()
            assert value(metrics, "hodei_outbox_unpublished") >= 1
            assert value(metrics, "hodei_outbox_lag_seconds") > 0
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS,
                                 LOCK_OUTBOX_RELAY)

    async def outbox_empty() -> bool:
        await relay.refresh_metrics()
        return (value(metrics, "hodei_outbox_unpublished"),
                value(metrics, "hodei_outbox_lag_seconds")) == (0, 0)

    await assert_eventually(outbox_empty, within_s=5)
    await scheduler.refresh_metrics()
    consumers = {s.labels["consumer"] for m in metrics.registry.collect()
                 if m.name == "hodei_consumer_pending" for s in m.samples}
    assert consumers == {"JOB_EVENTS/scheduler-dispatch", "WORKER_EVENTS/scheduler-dispatch",
                         "WORKER_STATUS/scheduler-status", "JOB_EVENTS/scheduler-cancel"}
