"""jobs.cancel: queued jobs end at once, running ones are asked once, ended ones refuse."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from asyncpg import Pool

from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.api import ErrorCode
from hodei_common.contracts.jobs import JobCancelled, JobCancelRequested, JobState
from hodei_common.errors import ApiError
from tests.api.helpers import job, row_counts

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def outbox_subjects(pool: Pool) -> list[str]:
    rows = await pool.fetch("SELECT subject FROM outbox_events ORDER BY seq")
    return [row["subject"] for row in rows]


async def test_cancel_of_queued_job_cancels_it_at_once(client: ApiClient, pool: Pool) -> None:
    queued = (await client.submit(job())).job

    reply = await client.cancel(queued.id)

    assert reply.cancelled is True
    assert reply.job.state is JobState.CANCELLED
    assert reply.job.completed_at is not None
    assert (await client.get(queued.id)).state is JobState.CANCELLED
    assert await outbox_subjects(pool) == [subjects.job_event(queued.id, subjects.JOB_CREATED),
                                           subjects.job_event(queued.id, subjects.JOB_CANCELLED)]
    payload = await pool.fetchval("SELECT payload FROM outbox_events WHERE subject = $1",
                                  subjects.job_event(queued.id, subjects.JOB_CANCELLED))
    event = msgspec.json.decode(payload, type=JobCancelled)
    assert (event.job_id, event.attempt) == (queued.id, 1)


async def test_cancel_of_running_job_requests_cancellation_once(
    client: ApiClient, pool: Pool
) -> None:
    queued = (await client.submit(job())).job
    worker_id = uuid.uuid4()
    await pool.execute("INSERT INTO workers (id, provider, state) VALUES ($1, 'local', 'BUSY')",
                       worker_id)
    await pool.execute("UPDATE jobs SET state = 'RUNNING', worker_id = $2, started_at = now() "
                       "WHERE id = $1", queued.id, worker_id)

    first = await client.cancel(queued.id)
    after_first = await row_counts(pool)
    second = await client.cancel(queued.id)

    assert first.cancelled is False
    assert first.job.state is JobState.RUNNING
    assert first.job.cancel_requested_at is not None
    assert second.job.cancel_requested_at == first.job.cancel_requested_at
    assert second.cancelled is False
    assert await row_counts(pool) == after_first
    assert await outbox_subjects(pool) == [
        subjects.job_event(queued.id, subjects.JOB_CREATED),
        subjects.job_event(queued.id, subjects.JOB_CANCEL_REQUESTED)]
    assert [e.event_type for e in await client.events(queued.id)] == [
        "JobCreated", "JobCancelRequested"]
    payload = await pool.fetchval("SELECT payload FROM outbox_events WHERE subject = $1",
                                  subjects.job_event(queued.id, subjects.JOB_CANCEL_REQUESTED))
    assert msgspec.json.decode(payload, type=JobCancelRequested).worker_id == worker_id


@pytest.mark.parametrize("state", ["SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"])
async def test_cancel_of_ended_job_is_failed_precondition_and_changes_nothing(
    client: ApiClient, pool: Pool, state: str
) -> None:
    ended = (await client.submit(job())).job
    await pool.execute("UPDATE jobs SET state = $2, completed_at = now() WHERE id = $1",
                       ended.id, state)
    before_job = await client.get(ended.id)
    before = await row_counts(pool)

    with pytest.raises(ApiError) as caught:
        await client.cancel(ended.id)

    assert caught.value.code == ErrorCode.FAILED_PRECONDITION
    assert caught.value.message == f"job {ended.id} is already {state}"
    assert await client.get(ended.id) == before_job
    assert await row_counts(pool) == before


async def test_cancel_of_unknown_job_is_not_found(client: ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        await client.cancel(uuid.uuid4())

    assert caught.value.code == ErrorCode.NOT_FOUND
