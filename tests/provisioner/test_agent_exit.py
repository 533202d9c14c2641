"""An agent the local provider reaps while its worker still counts on it: the worker is lost
at once and its job requeued; an agent that exits 0 after its job is left to its report."""

from __future__ import annotations

import os
import signal
import sys
from uuid import UUID, uuid4

import asyncpg
import pytest
from nats.js import JetStreamContext

from hodei_common.testing import assert_eventually
from hodei_provisioner.service import ProvisionerService
from tests.provisioner.conftest import FAKE_AGENT
from tests.provisioner.helpers import request_worker, resource_pid, worker

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def _busy_with_a_job(pool: asyncpg.Pool, js: JetStreamContext) -> tuple[UUID, UUID, int]:
    worker_id = await request_worker(pool)
    await assert_eventually(lambda: _state_is(pool, worker_id, "READY"), within_s=15)
    pid = await assert_eventually(lambda: resource_pid(pool, worker_id))
    job_id = uuid4()
    await pool.execute(
        "INSERT INTO jobs (id, command, timeout_s, provider, state, worker_id, assigned_at, "
        "started_at) VALUES ($1, 'sleep 100', 60, 'local', 'RUNNING', $2, now(), now())",
        job_id, worker_id)
    await pool.execute("UPDATE workers SET state = 'BUSY', current_job_id = $2 WHERE id = $1",
                       worker_id, job_id)
    return worker_id, job_id, pid


async def _state_is(pool: asyncpg.Pool, worker_id: UUID, state: str) -> bool:
    return bool((await worker(pool, worker_id))["state"] == state)


async def test_an_agent_killed_mid_job_loses_its_worker_and_requeues_the_job(
    provisioner: ProvisionerService, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    worker_id, job_id, pid = await _busy_with_a_job(pool, js)
    os.kill(pid, signal.SIGKILL)
    await assert_eventually(lambda: _state_is(pool, worker_id, "FAILED"), within_s=5)
    row = await worker(pool, worker_id)
    assert row["error"] == "its agent exited with code -9"
    job = await pool.fetchrow("SELECT state, attempt, error FROM jobs WHERE id = $1", job_id)
    assert (job["state"], job["attempt"]) == ("QUEUED", 2)
    assert job["error"] == "worker lost: its agent exited with code -9"
    # The release consumer saw worker.failed: the (already gone) resource is marked released,
    # which ends the recovery saga; the provisioning saga had completed at registration.
    await assert_eventually(lambda: pool.fetchval(
        "SELECT terminated_at IS NOT NULL FROM workers WHERE id = $1", worker_id))
    sagas = await pool.fetch(
        "SELECT g.saga_type, g.state, array_agg(s.state ORDER BY s.position) AS steps "
        "FROM sagas g JOIN saga_steps s ON s.saga_id = g.id WHERE g.aggregate_id = $1 "
        "GROUP BY g.id ORDER BY g.created_at", worker_id)
    assert [(r["saga_type"], r["state"], r["steps"]) for r in sagas] == [
        ("provisioning", "COMPLETED", ["COMPLETED"] * 3),
        ("recovery", "COMPLETED", ["COMPLETED"] * 3)]


@pytest.mark.parametrize("agent_command", [[sys.executable, str(FAKE_AGENT), "--then", "exit"]])
async def test_an_agent_that_exits_while_idle_loses_its_worker(
    provisioner: ProvisionerService, pool: asyncpg.Pool,
) -> None:
    worker_id = await request_worker(pool)
    await assert_eventually(lambda: _state_is(pool, worker_id, "FAILED"), within_s=15)
    assert (await worker(pool, worker_id))["error"] == "its agent exited with code 0"
