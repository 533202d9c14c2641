"""jobs.submit: a QUEUED job, its audit event and its outbox row, written together."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest
from asyncpg import Pool
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from hodei_api.service import ApiService
from hodei_common import tracing
from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.api import ErrorCode
from hodei_common.contracts.jobs import JobCreated, JobState
from hodei_common.errors import ApiError
from hodei_common.testing import assert_eventually
from tests.api.helpers import job, row_counts

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def test_submit_stores_queued_job_with_created_event_and_outbox_row(
    client: ApiClient, pool: Pool
) -> None:
    reply = await client.submit(job("echo hi", name="greet", args=["a"], timeout_s=30.0))

    assert reply.created is True
    assert reply.job.state is JobState.QUEUED
    row = await pool.fetchrow("SELECT state, command, args, timeout_s, xmin FROM jobs WHERE id=$1",
                              reply.job.id)
    assert row is not None
    assert (row["state"], row["command"], row["args"], row["timeout_s"]) == (
        "QUEUED", "echo hi", ["a"], 30.0)
    audit = await pool.fetch("SELECT event_type, payload, xmin FROM domain_events "
                             "WHERE aggregate_id=$1", reply.job.id)
    assert [a["event_type"] for a in audit] == ["JobCreated"]
    outbox = await pool.fetch("SELECT subject, event_type, payload, xmin FROM outbox_events")
    assert [(o["subject"], o["event_type"]) for o in outbox] == [
        (subjects.job_event(reply.job.id, subjects.JOB_CREATED), "JobCreated")]
    event = msgspec.json.decode(outbox[0]["payload"], type=JobCreated)
    assert event.job_id == reply.job.id
    assert event.name == "greet"
    # One transaction id wrote all three rows.
    assert row["xmin"] == audit[0]["xmin"] == outbox[0]["xmin"]


async def test_created_event_carries_env_keys_but_never_env_values(
    client: ApiClient, pool: Pool
) -> None:
    reply = await client.submit(job(env={"API_TOKEN": "s3cr3t-value", "MODE": "fast-lane"}))

    assert (reply.job.env, reply.job.env_keys) == ({}, ["API_TOKEN", "MODE"])
    assert await pool.fetchval("SELECT env FROM jobs WHERE id=$1", reply.job.id) == {
        "API_TOKEN": "s3cr3t-value", "MODE": "fast-lane"}
    payload = await pool.fetchval("SELECT payload FROM domain_events WHERE aggregate_id=$1",
                                  reply.job.id)
    assert payload["env_keys"] == ["API_TOKEN", "MODE"]
    outbox_payload = bytes(await pool.fetchval("SELECT payload FROM outbox_events"))
    for secret in ("s3cr3t-value", "fast-lane"):
        assert secret not in str(payload)
        assert secret.encode() not in outbox_payload


async def test_repeated_idempotency_key_returns_the_same_job_and_writes_nothing(
    client: ApiClient, pool: Pool
) -> None:
    first = await client.submit(job("echo once", idempotency_key="deploy-42"))
    before = await row_counts(pool)

    again = await client.submit(job("echo twice", idempotency_key="deploy-42"))

    assert first.created is True
    assert again.created is False
    assert again.job == first.job
    assert await row_counts(pool) == before


async def test_a_job_id_chosen_by_the_client_is_kept_and_a_resubmit_returns_that_job(
    client: ApiClient, pool: Pool
) -> None:
    job_id = uuid.uuid4()
    first = await client.submit(job("echo mine", id=job_id))
    before = await row_counts(pool)
    again = await client.submit(job("echo mine", id=job_id))

    assert (first.created, first.job.id) == (True, job_id)
    assert again.created is False
    assert again.job == first.job
    assert await row_counts(pool) == before


async def test_a_job_id_already_taken_by_another_job_is_refused_and_changes_nothing(
    client: ApiClient, pool: Pool
) -> None:
    job_id = uuid.uuid4()
    await client.submit(job("echo first", id=job_id))
    before = await row_counts(pool)
    with pytest.raises(ApiError) as refused:
        await client.submit(job("echo other", id=job_id))

    assert refused.value.code == ErrorCode.INVALID_ARGUMENT
    assert str(job_id) in refused.value.message
    assert await row_counts(pool) == before


async def test_a_new_job_wakes_the_schedulers_naming_it_and_a_repeated_submit_does_not(
    client: ApiClient, nc: NATS
) -> None:
    wakes: list[bytes] = []

    async def woken(msg: Msg) -> None:
        wakes.append(msg.data)

    await nc.subscribe(subjects.SCHEDULER_WAKE, cb=woken)
    await nc.flush()
    reply = await client.submit(job("echo once", idempotency_key="wake-1"))
    about = [str(reply.job.id).encode()]
    await assert_eventually(lambda: wakes == about)
    await client.submit(job("echo once", idempotency_key="wake-1"))  # nothing new to do
    await nc.flush()
    await asyncio.sleep(0.2)
    assert wakes == about


async def test_submit_continues_the_callers_trace_into_the_outbox(
    api: ApiService, client: ApiClient, pool: Pool
) -> None:
    with tracing.tracer().start_as_current_span("cli") as span:
        reply = await client.submit(job())
        trace_id = format(span.get_span_context().trace_id, "032x")

    headers = await pool.fetchval("SELECT headers FROM outbox_events")
    assert headers[subjects.HEADER_TRACEPARENT].split("-")[1] == trace_id
    audit = await pool.fetchrow(
        "SELECT correlation_id, trace_id FROM domain_events WHERE aggregate_id=$1", reply.job.id)
    assert audit["trace_id"] == trace_id
    assert audit["correlation_id"] == str(reply.job.id)
