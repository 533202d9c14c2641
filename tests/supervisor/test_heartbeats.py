"""Heartbeats: the newest beat of each worker lands in workers.last_heartbeat, in batches."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Heartbeat
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_supervisor.config import SupervisorSettings
from hodei_supervisor.service import SupervisorService

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


@pytest.fixture
async def supervisor(settings: Settings) -> AsyncIterator[SupervisorService]:
    service = SupervisorService(SupervisorSettings(**settings.model_dump(),
                                                   heartbeat_flush_s=0.1))
    run = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), 30)
    yield service
    await service.stop()
    await run


async def beat(nc: NATS, worker_id: uuid.UUID, at: datetime, subject: str | None = None) -> None:
    body = msgspec.json.encode(Heartbeat(worker_id=worker_id, at=at))
    await nc.publish(subject or subjects.worker_heartbeat(worker_id), body)


async def test_the_newest_beat_of_each_worker_is_recorded_and_never_moves_back(
    supervisor: SupervisorService, nc: NATS, pool: asyncpg.Pool
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    for worker_id in (a, b):
        await pool.execute("INSERT INTO workers (id, provider, state) VALUES ($1, 'local', "
                           "'READY')", worker_id)
    assert await pool.fetchval("SELECT last_heartbeat FROM workers WHERE id = $1", a) is None
    now = datetime.now(UTC).replace(microsecond=0)
    await beat(nc, a, now - timedelta(seconds=2))
    await beat(nc, a, now)
    await beat(nc, b, now - timedelta(seconds=5))

    async def recorded() -> bool:
        rows = await pool.fetch("SELECT id, last_heartbeat FROM workers")
        return {r["id"]: r["last_heartbeat"] for r in rows} == {
            a: now, b: now - timedelta(seconds=5)}

    await assert_eventually(recorded, within_s=5)
    await beat(nc, a, now - timedelta(seconds=10))  # late and old
    await nc.flush()
    await supervisor.flush()
    assert await pool.fetchval("SELECT last_heartbeat FROM workers WHERE id = $1", a) == now


async def test_a_beat_on_another_workers_subject_or_garbage_is_ignored(
    supervisor: SupervisorService, nc: NATS, pool: asyncpg.Pool
) -> None:
    victim, sentinel = uuid.uuid4(), uuid.uuid4()
    for worker_id in (victim, sentinel):
        await pool.execute("INSERT INTO workers (id, provider, state) VALUES ($1, 'local', "
                           "'BUSY')", worker_id)
    await beat(nc, victim, datetime.now(UTC), subject=subjects.worker_heartbeat(uuid.uuid4()))
    await nc.publish(subjects.worker_heartbeat(victim), b"not json")
    # Messages from one connection arrive in order: once the sentinel's beat is recorded, the
    # two bad ones before it were handled too.
    await beat(nc, sentinel, datetime.now(UTC))
    await assert_eventually(lambda: pool.fetchval(
        "SELECT last_heartbeat IS NOT NULL FROM workers WHERE id = $1", sentinel))
    assert await pool.fetchval("SELECT last_heartbeat FROM workers WHERE id = $1", victim) is None
