"""`hodei job explain`: where a job is and why it waits, in a few lines."""

from __future__ import annotations

import re

import asyncpg
import pytest
from nats.js import JetStreamContext

from hodei_common.client import ApiClient
from hodei_common.contracts.agent import StatusKind
from hodei_common.contracts.api import SubmitJob
from hodei_common.lifecycle import workers as lifecycle_workers
from hodei_common.testing import assert_eventually
from tests.cli.conftest import cli_env, run_cli
from tests.scheduler.conftest import report
from tests.scheduler.test_scheduler import _is, assigned_job, job_state, workers

pytestmark = [pytest.mark.nats, pytest.mark.postgres]
__all__ = ["cli_env"]  # a fixture


async def test_a_queued_job_waits_for_the_worker_being_made_for_it(
    api: ApiClient, pool: asyncpg.Pool
) -> None:
    job = (await api.submit(SubmitJob(command="true"))).job
    worker_id = (await assert_eventually(lambda: workers(pool, "CREATING")))[0]["id"]
    found = await api.explain(job.id)
    assert found.job.state == "QUEUED"
    assert found.waiting_for.startswith(f"worker {worker_id} to register (made ")
    assert (found.worker_id, found.worker_state, found.heartbeat_age_s) == (
        worker_id, "CREATING", None)
    assert (found.worker_resource, found.worker_status) == (None, None)
    assert found.last_failure is None


async def test_a_queued_job_names_its_workers_resource_and_what_its_provider_last_said(
    api: ApiClient, pool: asyncpg.Pool
) -> None:
    job = (await api.submit(SubmitJob(command="true"))).job
    worker_id = (await assert_eventually(lambda: workers(pool, "CREATING")))[0]["id"]
    pod = f"hodei-worker-{worker_id}"
    async with pool.acquire() as conn:  # as the Kubernetes provider does
        assert await lifecycle_workers.record_resource(
            conn, lifecycle_workers.WorkerRef(worker_id, "local", job.id), pod, actor="test")
        assert await lifecycle_workers.note_status(
            conn, worker_id, f"pod {pod} Pending: ContainerCreating")
    found = await api.explain(job.id)
    assert (found.worker_resource, found.worker_status) == (
        pod, f"pod {pod} Pending: ContainerCreating")
    assert found.worker_status_age_s is not None
    assert 0 <= found.worker_status_age_s < 5
    assert re.fullmatch(
        rf"worker {worker_id} to register \(made \d+\.\ds ago; pod {pod} Pending: "
        r"ContainerCreating, \d+\.\ds ago\)", found.waiting_for), found.waiting_for


async def test_a_requeued_job_says_its_backoff_its_lost_worker_and_why(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext, cli_env: dict[str, str]
) -> None:
    job, worker_id = await assigned_job(api, pool, "true")
    await report(js, worker_id, job.id, 1, StatusKind.STARTED)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "RUNNING"))
    running = await api.explain(job.id)
    assert running.waiting_for.startswith("its command to finish (running for ")
    await assert_eventually(lambda: _is(job_state(pool, job.id), "QUEUED"), within_s=10)
    found = await api.explain(job.id)
    assert (found.job.attempt, found.job.error[:30]) == (2, "worker lost: no heartbeat for ")
    assert found.last_failure is not None
    assert found.last_failure.startswith("execution/finish: worker lost: no heartbeat for ")

    shown = await run_cli(cli_env, "job", "explain", str(job.id))
    assert shown.code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"job {job.id}: QUEUED, attempt 2 of 3"
    assert lines[1].startswith("waiting for: ")
    assert lines[2].startswith("worker: ")
    assert any(line.startswith("last failed step: execution/finish: worker lost: ")
               for line in lines)
    assert len(lines) <= 6


async def test_a_queued_job_without_room_says_what_its_provider_lacks(
    api: ApiClient, pool: asyncpg.Pool
) -> None:
    await pool.execute("UPDATE provider_configs SET max_workers = 0 WHERE name = 'local'")
    await api.submit(SubmitJob(command="true"))
    job = (await api.submit(SubmitJob(command="true"))).job
    found = await api.explain(job.id)
    assert found.waiting_for == ("a free worker: provider 'local' has 0 of 0 workers, "
                                 "1 queued job(s) ahead")
    assert found.worker_id is None
    await pool.execute("UPDATE provider_configs SET enabled = false WHERE name = 'local'")
    assert (await api.explain(job.id)).waiting_for == "provider 'local' to be enabled"
