"""A job's env values are secrets: no reply carries them but ``jobs.get`` with ``show_env``."""

from __future__ import annotations

import msgspec
import pytest
from asyncpg import Pool

from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.api import GetJob, JobRef, JobReply, ListJobs
from tests.api.helpers import job, jobs_subject

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

SECRET = "s3cr3t-value"
ENV = {"MODE": "x", "API_TOKEN": SECRET}


async def raw(client: ApiClient, subject: str, request: msgspec.Struct) -> bytes:
    return await client.request(subject, msgspec.json.encode(request))


async def test_no_reply_carries_an_env_value_and_every_job_names_its_keys(
    client: ApiClient, pool: Pool
) -> None:
    submit = job(env=ENV, idempotency_key="deploy-1")
    queued = await raw(client, jobs_subject(subjects.JOBS_SUBMIT), submit)
    # The existing job, re-read:
    again = await raw(client, jobs_subject(subjects.JOBS_SUBMIT), submit)
    running = (await client.submit(job("sleep 9", env=ENV))).job
    await pool.execute("UPDATE jobs SET state = 'RUNNING' WHERE id = $1", running.id)
    queued_id = msgspec.json.decode(queued, type=dict)["job"]["id"]

    replies = {
        "submit": queued,
        "submit again": again,
        "get": await raw(client, jobs_subject(subjects.JOBS_GET), GetJob(id=running.id)),
        "list": await raw(client, jobs_subject(subjects.JOBS_LIST), ListJobs()),
        "explain": await raw(client, jobs_subject(subjects.JOBS_EXPLAIN), JobRef(id=running.id)),
        "events": await raw(client, jobs_subject(subjects.JOBS_EVENTS), JobRef(id=running.id)),
        "cancel running": await raw(client, jobs_subject(subjects.JOBS_CANCEL),
                                    JobRef(id=running.id)),
        "cancel queued": await raw(client, jobs_subject(subjects.JOBS_CANCEL),
                                   JobRef(id=queued_id)),
    }

    for endpoint, reply in replies.items():
        assert SECRET.encode() not in reply, endpoint
    jobs = await client.list_jobs()
    assert [(j.env, j.env_keys) for j in jobs] == [({}, ["API_TOKEN", "MODE"])] * 2


async def test_get_with_show_env_returns_the_values(client: ApiClient) -> None:
    submitted = (await client.submit(job(env=ENV))).job

    shown = await client.get(submitted.id, show_env=True)

    assert (shown.env, shown.env_keys) == (ENV, ["API_TOKEN", "MODE"])
    assert msgspec.structs.replace(shown, env={}) == await client.get(submitted.id)


async def test_get_request_without_show_env_withholds_the_values(client: ApiClient) -> None:
    submitted = (await client.submit(job(env=ENV))).job

    # The body an older client sends: a bare job reference.
    reply = await raw(client, jobs_subject(subjects.JOBS_GET), JobRef(id=submitted.id))

    got = msgspec.json.decode(reply, type=JobReply).job
    assert (got.env, got.env_keys) == ({}, ["API_TOKEN", "MODE"])
