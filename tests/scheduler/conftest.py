"""The scheduler with the api, relay and logs services, and a test that plays the workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_api.config import ApiSettings
from hodei_api.service import ApiService
from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Outcome, StatusKind, StatusReport
from hodei_common.relay import RelayService, RelaySettings
from hodei_common.runner import HodeiService
from hodei_common.settings import Settings
from hodei_common.testing.services import running
from hodei_logs.config import LogsSettings
from hodei_logs.service import LogsService
from hodei_scheduler.config import SchedulerSettings
from hodei_scheduler.service import SchedulerService


def core_services(settings: Settings) -> list[HodeiService]:
    """api, relay, scheduler and logs for the test's NATS and database."""
    base = settings.model_dump()
    return [
        ApiService(ApiSettings(**base)),
        RelayService(RelaySettings(**base)),
        SchedulerService(SchedulerSettings(**base, dispatch_interval_s=0.2)),
        LogsService(LogsSettings(**base)),
    ]


@pytest.fixture
async def core(settings: Settings) -> AsyncIterator[list[HodeiService]]:
    """api, relay, scheduler and logs running against the test's NATS and database."""
    services = core_services(settings)
    async with running(services):
        yield services


@pytest.fixture
def api(core: list[HodeiService], nc: NATS) -> ApiClient:
    return ApiClient(nc, timeout_s=5.0)


async def make_ready(pool: asyncpg.Pool, worker_id: UUID) -> None:
    """Play the provisioner: the worker registered."""
    await pool.execute(
        "UPDATE workers SET state = 'READY', registered_at = now(), idle_since = now(), "
        "provider_resource_id = 'test' WHERE id = $1", worker_id)


async def report(
    js: JetStreamContext, worker_id: UUID, job_id: UUID, attempt: int, kind: StatusKind,
    outcome: Outcome | None = None, exit_code: int | None = None, error: str | None = None,
    started_at: datetime | None = None, leaving: str | None = None,
) -> None:
    """Play the agent: one status report."""
    body = StatusReport(worker_id=worker_id, job_id=job_id, attempt=attempt, kind=kind,
                        at=datetime.now(UTC), outcome=outcome, exit_code=exit_code, error=error,
                        started_at=started_at, leaving=leaving)
    await js.publish(subjects.worker_status(worker_id), msgspec.json.encode(body),
                     headers={subjects.HEADER_MSG_ID: subjects.msg_id(job_id, attempt, kind)})
