"""The supervisor's sweep across replicas: one sweeps at a time, and one that fails or dies
mid-sweep never stops the others' sweeps."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_common import database
from hodei_common.database import LOCK_SUPERVISOR_SWEEP
from hodei_common.recovery import Recovery
from hodei_common.settings import Settings
from hodei_supervisor.config import SupervisorSettings
from hodei_supervisor.service import ACTOR
from hodei_supervisor.sweeps import Sweeper
from tests.locks import ENDINGS, Ending, Gate, end_mid_pass, next_turn

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


class WatchedRecovery(Recovery):
    """Recovery that records the workers it is asked to lose, and may wait at a gate first."""

    def __init__(self, pool: asyncpg.Pool, nc: NATS) -> None:
        super().__init__(pool, nc, actor=ACTOR)
        self.gate: Gate | None = None
        self.asked: list[uuid.UUID] = []

    async def lose(self, worker_id: uuid.UUID, reason: str, **kwargs: Any) -> str | None:
        self.asked.append(worker_id)
        if self.gate is not None:
            await self.gate.wait()
        return await super().lose(worker_id, reason, **kwargs)


@pytest.fixture
async def replicas(
    settings: Settings, nc: NATS, js: JetStreamContext,
) -> AsyncIterator[list[tuple[Sweeper, WatchedRecovery]]]:
    """Two supervisors' sweepers, each with its own pool."""
    async with AsyncExitStack() as stack:
        found = []
        for _ in range(2):
            pool = await database.create_pool(settings, initial_attempts=1)
            stack.push_async_callback(pool.close)
            recovery = WatchedRecovery(pool, nc)
            sweeper = Sweeper(pool, nc, recovery, SupervisorSettings(**settings.model_dump()),
                              heartbeat_interval_s=1.0)
            found.append((sweeper, recovery))
        yield found


async def silent_worker(pool: asyncpg.Pool) -> uuid.UUID:
    worker_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO workers (id, provider, mode, state, registered_at, last_heartbeat) "
        "VALUES ($1, 'local', 'ephemeral', 'READY', now() - interval '1 hour', "
        "now() - interval '1 hour')", worker_id)
    return worker_id


@pytest.mark.parametrize("ending", [None, *ENDINGS])
async def test_one_replica_sweeps_at_a_time_and_one_that_fails_or_dies_lets_go(
    replicas: list[tuple[Sweeper, WatchedRecovery]], pool: asyncpg.Pool, ending: Ending | None,
) -> None:
    (first, first_recovery), (second, second_recovery) = replicas
    worker_id = await silent_worker(pool)
    gate = first_recovery.gate = Gate()
    sweeping = asyncio.create_task(first.sweep())
    await asyncio.wait_for(gate.reached.wait(), 10)

    # While the first replica settles the silent worker, the second skips its turn.
    assert await second.sweep() is None
    assert second_recovery.asked == []

    if ending is None:
        gate.open()
        assert await sweeping == 1
        assert await second.sweep() == 0
    else:
        await end_mid_pass(ending, sweeping, gate, OSError("connection reset"), pool,
                           LOCK_SUPERVISOR_SWEEP)
        assert await next_turn(second.sweep) == 1
        assert second_recovery.asked == [worker_id]
    row = await pool.fetchrow("SELECT state, error FROM workers WHERE id = $1", worker_id)
    assert row is not None
    assert row["state"] == "FAILED"
    assert row["error"].startswith("no heartbeat for ")
