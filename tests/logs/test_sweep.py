"""The archive sweep across logs replicas: one sweeps at a time, and one that fails or dies
mid-sweep never stops the others' sweeps."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from hodei_common import logarchive
from hodei_common.database import LOCK_LOG_SWEEP
from hodei_common.settings import Settings
from hodei_common.testing.services import running
from hodei_logs.config import LogsSettings
from hodei_logs.service import LogsService
from tests.locks import ENDINGS, Ending, Gate, end_mid_pass, next_turn
from tests.logs.test_archive import archive_row, finished_job, numbered

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


@pytest.fixture
async def replicas(settings: Settings) -> AsyncIterator[list[LogsService]]:
    """Two logs services on one database and NATS; they sweep at start, then only when the
    test says."""
    services = [LogsService(LogsSettings(**{
        **settings.model_dump(), "log_archive_max_age_s": 3600, "log_archive_sweep_s": 3600}))
        for _ in range(2)]
    async with running(services):
        yield services


async def test_one_replica_sweeps_at_a_time(
    replicas: list[LogsService], pool: asyncpg.Pool, js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _ending_mid_sweep(replicas, pool, js, monkeypatch, None)


@pytest.mark.parametrize("ending", ENDINGS)
async def test_a_replica_that_fails_or_dies_mid_sweep_lets_another_sweep(
    replicas: list[LogsService], pool: asyncpg.Pool, js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch, ending: Ending,
) -> None:
    await _ending_mid_sweep(replicas, pool, js, monkeypatch, ending)


async def _ending_mid_sweep(
    replicas: list[LogsService], pool: asyncpg.Pool, js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch, ending: Ending | None,
) -> None:
    """The first replica stops at its first deletion; the second skips its turn meanwhile,
    then sweeps once the first finished (``ending`` None), failed or died."""
    first, second = replicas
    old = [await finished_job(pool, js, numbered(3)) for _ in range(2)]
    for job_id in old:
        await archive_row(pool, job_id)
    await pool.execute("UPDATE job_log_files SET created_at = now() - interval '2 hours'")

    gate = Gate()
    deleted_by: list[tuple[int, uuid.UUID]] = []
    delete = logarchive.delete

    async def watched_delete(js: JetStreamContext, namespace: str, job_id: uuid.UUID) -> None:
        replica = 0 if js is first.js else 1
        if replica == 0:
            await gate.wait()
        await delete(js, namespace, job_id)
        deleted_by.append((replica, job_id))

    monkeypatch.setattr(logarchive, "delete", watched_delete)
    sweeping = asyncio.create_task(first.sweep_archives())
    await asyncio.wait_for(gate.reached.wait(), 10)
    assert await second.sweep_archives() is None
    assert deleted_by == []

    if ending is None:
        gate.open()
        assert await sweeping == 2
        assert sorted(deleted_by) == sorted((0, job_id) for job_id in old)
        assert await second.sweep_archives() == 0
        return
    await end_mid_pass(ending, sweeping, gate, NatsTimeoutError(), pool, LOCK_LOG_SWEEP)
    assert await next_turn(second.sweep_archives) == 2
    assert sorted(deleted_by) == sorted((1, job_id) for job_id in old)
    assert await pool.fetchval("SELECT count(*) FROM job_log_files") == 0
