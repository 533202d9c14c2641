"""A cancelled job's worker is destroyed, even a reusable one with jobs left."""

from __future__ import annotations

import asyncpg
import pytest
from nats.js import JetStreamContext

from hodei_common.client import ApiClient
from hodei_common.contracts.agent import Outcome, StatusKind
from hodei_common.testing import assert_eventually
from tests.scheduler.conftest import report
from tests.scheduler.test_scheduler import _is, assigned_job, job_state

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def test_a_cancelled_jobs_reusable_worker_is_retired_not_freed(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    await pool.execute("UPDATE provider_configs SET worker_mode = 'reusable' "
                       "WHERE name = 'local'")
    job, worker_id = await assigned_job(api, pool, "sleep 100")
    await report(js, worker_id, job.id, 1, StatusKind.STARTED)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "RUNNING"))
    await api.cancel(job.id)
    await report(js, worker_id, job.id, 1, StatusKind.FINISHED, Outcome.CANCELLED,
                 exit_code=143)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "CANCELLED"))
    worker = await pool.fetchrow("SELECT state, current_job_id FROM workers WHERE id = $1",
                                 worker_id)
    assert (worker["state"], worker["current_job_id"]) == ("TERMINATING", None)
