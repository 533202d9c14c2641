"""The provisioner with the real agent (``python -m hodei_agent``) as its local workers."""

from __future__ import annotations

import sys
from uuid import UUID

import asyncpg
import pytest

from hodei_common.contracts.workers import WorkerState
from hodei_common.testing import assert_eventually
from hodei_provisioner.config import ProvisionerSettings
from hodei_provisioner.service import ProvisionerService
from tests.provisioner.helpers import (
    is_alive,
    log_text,
    request_worker,
    resource_pid,
    retire_worker,
    worker,
)

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def _state_is(pool: asyncpg.Pool, worker_id: UUID, state: WorkerState) -> bool:
    return (await worker(pool, worker_id))["state"] == state


@pytest.mark.parametrize("agent_command", [[sys.executable, "-m", "hodei_agent"]])
async def test_the_real_agent_registers_and_is_destroyed_on_release(
    provisioner: ProvisionerService, pool: asyncpg.Pool,
    provisioner_settings: ProvisionerSettings,
) -> None:
    worker_id = await request_worker(pool)
    await assert_eventually(lambda: _state_is(pool, worker_id, WorkerState.READY),
                            within_s=20)
    pid = await assert_eventually(lambda: resource_pid(pool, worker_id))
    assert (await worker(pool, worker_id))["hostname"]
    # The agent logs its registration after the reply; the line lands a moment later.
    await assert_eventually(
        lambda: "registered" in log_text(provisioner_settings.workers_dir(), worker_id))
    await retire_worker(pool, worker_id)
    await assert_eventually(lambda: _state_is(pool, worker_id, WorkerState.TERMINATED))
    assert not is_alive(pid)
