"""Job events are published on subjects that name their job: ``job.<id>.<event>``."""

from __future__ import annotations

from uuid import UUID

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Outcome, StatusKind
from hodei_common.testing import assert_eventually
from tests.scheduler.conftest import report
from tests.scheduler.test_scheduler import _is, assigned_job, job_state

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

EVENT_OF_TYPE = {
    "JobCreated": subjects.JOB_CREATED, "JobAssigned": subjects.JOB_ASSIGNED,
    "JobAccepted": subjects.JOB_ACCEPTED, "JobStarted": subjects.JOB_STARTED,
    "JobSucceeded": subjects.JOB_SUCCEEDED, "JobCancelRequested": subjects.JOB_CANCEL_REQUESTED,
    "JobCancelled": subjects.JOB_CANCELLED,
}
SUCCEEDED = [subjects.JOB_CREATED, subjects.JOB_ASSIGNED, subjects.JOB_ACCEPTED,
             subjects.JOB_STARTED, subjects.JOB_SUCCEEDED]
CANCELLED = [subjects.JOB_CREATED, subjects.JOB_ASSIGNED, subjects.JOB_ACCEPTED,
             subjects.JOB_STARTED, subjects.JOB_CANCEL_REQUESTED, subjects.JOB_CANCELLED]


async def replayed(js: JetStreamContext, filter_subject: str, count: int) -> list[str]:
    """The subjects of the first ``count`` messages JOB_EVENTS stores on ``filter_subject``,
    then whether one more comes (it should not)."""
    sub = await js.subscribe(filter_subject, stream=subjects.JOB_EVENTS_STREAM,
                             ordered_consumer=True)
    try:
        seen = [(await sub.next_msg(timeout=5)).subject for _ in range(count)]
        with pytest.raises(TimeoutError):
            await sub.next_msg(timeout=0.5)
        return seen
    finally:
        await sub.unsubscribe()


async def archived(pool: asyncpg.Pool, job_id: UUID) -> bool:
    return bool(await pool.fetchval("SELECT 1 FROM job_log_files WHERE job_id = $1", job_id))


async def test_a_jobs_events_name_it_and_one_jobs_subscription_gets_its_events_alone(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext, nc: NATS
) -> None:
    live: list[Msg] = []

    async def heard(msg: Msg) -> None:
        live.append(msg)

    await nc.subscribe(subjects.JOB_EVENTS_SUBJECTS, cb=heard)
    done, done_worker = await assigned_job(api, pool, "echo one")
    await report(js, done_worker, done.id, 1, StatusKind.STARTED)
    await report(js, done_worker, done.id, 1, StatusKind.FINISHED, Outcome.SUCCEEDED,
                 exit_code=0)
    await assert_eventually(lambda: _is(job_state(pool, done.id), "SUCCEEDED"))

    # The scheduler's cancel consumer hears the other job's cancel request by its subject.
    other, other_worker = await assigned_job(api, pool, "sleep 100")
    orders = await nc.subscribe(subjects.worker_control(other_worker))
    await report(js, other_worker, other.id, 1, StatusKind.STARTED)
    await assert_eventually(lambda: _is(job_state(pool, other.id), "RUNNING"))
    await api.cancel(other.id)
    await orders.next_msg(timeout=5)
    await report(js, other_worker, other.id, 1, StatusKind.FINISHED, Outcome.CANCELLED,
                 exit_code=143)
    await assert_eventually(lambda: _is(job_state(pool, other.id), "CANCELLED"))
    # The logs service's consumer heard both ends: both logs are archived.
    for job_id in (done.id, other.id):
        await assert_eventually(lambda job_id=job_id: archived(pool, job_id), within_s=10)

    assert await replayed(js, subjects.job_events_of(done.id), len(SUCCEEDED)) == [
        subjects.job_event(done.id, event) for event in SUCCEEDED]
    assert await replayed(js, subjects.job_events_of(other.id), len(CANCELLED)) == [
        subjects.job_event(other.id, event) for event in CANCELLED]
    assert await replayed(js, subjects.job_events(subjects.JOB_CANCEL_REQUESTED), 1) == [
        subjects.job_event(other.id, subjects.JOB_CANCEL_REQUESTED)]

    # Every event heard live is on its own job's subject, named after the event.
    await assert_eventually(lambda: len(live) == len(SUCCEEDED) + len(CANCELLED))
    for msg in live:
        assert msg.headers is not None
        job_id = msgspec.json.decode(msg.data)["job_id"]
        event = EVENT_OF_TYPE[msg.headers[subjects.HEADER_EVENT_TYPE]]
        assert msg.subject == subjects.job_event(job_id, event)

