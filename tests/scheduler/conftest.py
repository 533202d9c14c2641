"""The scheduler with the api, relay and logs services, and a test that plays the workers."""

from __future__ import annotations

import asyncio
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
from hodei_logs.service import LogsService
from hodei_scheduler.config import SchedulerSettings
from hodei_scheduler.service import SchedulerService


async def start(services: list[HodeiService]) -> list[asyncio.Task[None]]:
    runs = [asyncio.create_task(s.run()) for s in services]
    ready = asyncio.gather(*(s.ready.wait() for s in services))
    done, _ = await asyncio.wait([ready, *runs], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    for task in runs:
        if task in done:
            task.result()
    return runs


@pytest.fixture
async def core(settings: Settings) -> AsyncIterator[list[HodeiService]]:
    """api, relay, scheduler and logs running against the test's NATS and database."""
    base = settings.model_dump()
    services: list[HodeiService] = [
        ApiService(ApiSettings(**base)),
        RelayService(RelaySettings(**base)),
        SchedulerService(SchedulerSettings(**base, dispatch_interval_s=0.2)),
        LogsService(settings),
    ]
    runs = await start(services)
    yield services
    await asyncio.gather(*(s.stop() for s in services))
    await asyncio.gather(*runs)


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
) -> None:
    """Play the agent: one status report."""
    body = StatusReport(worker_id=worker_id, job_id=job_id, attempt=attempt, kind=kind,
                        at=datetime.now(UTC), outcome=outcome, exit_code=exit_code, error=error)
    await js.publish(subjects.worker_status(worker_id), msgspec.json.encode(body),
                     headers={subjects.HEADER_MSG_ID: subjects.msg_id(job_id, attempt, kind)})
