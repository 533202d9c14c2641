"""Sagas record provisioning and recovery step by step, with an append-only trail."""

from __future__ import annotations

from uuid import UUID

import asyncpg
import pytest
from nats.js import JetStreamContext

from hodei_common.client import ApiClient
from hodei_common.contracts.agent import Outcome, StatusKind
from hodei_common.contracts.api import SubmitJob
from hodei_common.testing import assert_eventually
from tests.scheduler.conftest import make_ready, report
from tests.scheduler.test_scheduler import _is, assigned_job, job_state, workers

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def saga_steps(pool: asyncpg.Pool, kind: str, aggregate: UUID) -> list[tuple[str, ...]]:
    rows = await pool.fetch(
        "SELECT g.state AS saga, s.step_name, s.state, s.error FROM sagas g "
        "JOIN saga_steps s ON s.saga_id = g.id WHERE g.saga_type = $1 AND g.aggregate_id = $2 "
        "ORDER BY s.position", kind, aggregate)
    return [(r["saga"], r["step_name"], r["state"], r["error"]) for r in rows]


async def test_a_worker_that_never_registers_ends_its_provisioning_saga_compensated(
    api: ApiClient, pool: asyncpg.Pool
) -> None:
    await api.submit(SubmitJob(command="true"))
    worker_id = (await assert_eventually(lambda: workers(pool, "CREATING")))[0]["id"]
    assert await saga_steps(pool, "provisioning", worker_id) == [
        ("RUNNING", "create_worker_row", "COMPLETED", None),
        ("RUNNING", "create_resource", "PENDING", None),
        ("RUNNING", "await_registration", "PENDING", None)]
    await assert_eventually(
        lambda: pool.fetchval("SELECT state = 'COMPENSATED' FROM sagas WHERE aggregate_id = $1 "
                              "AND saga_type = 'provisioning'", worker_id), within_s=10)
    steps = await saga_steps(pool, "provisioning", worker_id)
    assert steps[2] == ("COMPENSATED", "await_registration", "FAILED",
                        "did not register within 1.5s")
    trail = await pool.fetch(
        "SELECT h.step_name, h.state FROM saga_step_history h JOIN sagas g ON g.id = h.saga_id "
        "WHERE g.aggregate_id = $1 AND g.saga_type = 'provisioning' ORDER BY h.seq", worker_id)
    assert [(r["step_name"], r["state"]) for r in trail] == [
        ("create_worker_row", "COMPLETED"), ("create_resource", "PENDING"),
        ("await_registration", "PENDING"), ("await_registration", "FAILED")]
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await pool.execute("DELETE FROM saga_step_history")


async def test_a_lost_worker_opens_a_recovery_saga_saying_why(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job, worker_id = await assigned_job(api, pool, "true")
    await report(js, worker_id, job.id, 1, StatusKind.STARTED)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "QUEUED"), within_s=10)
    steps = await saga_steps(pool, "recovery", worker_id)
    assert [s[1:3] for s in steps] == [("declare_worker_failed", "COMPLETED"),
                                       ("settle_job", "COMPLETED"),
                                       ("destroy_resource", "PENDING")]
    assert steps[0][3].startswith("no heartbeat for ")
    assert steps[0][0] == "RUNNING"  # until the provisioner destroys the resource


async def test_each_attempt_has_an_execution_saga_the_lost_one_compensated(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job, worker_id = await assigned_job(api, pool, "true")
    assert [s[1:3] for s in await saga_steps(pool, "execution", job.id)] == [
        ("assign", "COMPLETED"), ("start", "PENDING"), ("finish", "PENDING")]
    await report(js, worker_id, job.id, 1, StatusKind.STARTED)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "QUEUED"), within_s=10)
    lost = await saga_steps(pool, "execution", job.id)
    assert [s[:3] for s in lost] == [("COMPENSATED", "assign", "COMPLETED"),
                                     ("COMPENSATED", "start", "COMPLETED"),
                                     ("COMPENSATED", "finish", "FAILED")]
    assert lost[2][3].startswith("worker lost: no heartbeat for ")

    fresh = await assert_eventually(
        lambda: pool.fetchval("SELECT id FROM workers WHERE state = 'CREATING' AND "
                              "for_job_id = $1", job.id))
    await make_ready(pool, fresh)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "ASSIGNED"))
    await report(js, fresh, job.id, 2, StatusKind.FINISHED, Outcome.SUCCEEDED, exit_code=0)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "SUCCEEDED"))
    states = await pool.fetch(
        "SELECT g.state, array_agg(s.state ORDER BY s.position) AS steps FROM sagas g "
        "JOIN saga_steps s ON s.saga_id = g.id WHERE g.saga_type = 'execution' AND "
        "g.aggregate_id = $1 GROUP BY g.id, g.created_at ORDER BY g.created_at", job.id)
    assert [(r["state"], r["steps"]) for r in states] == [
        ("COMPENSATED", ["COMPLETED", "COMPLETED", "FAILED"]),
        ("COMPLETED", ["COMPLETED"] * 3)]
