"""The service itself: discovery, replicas, failures turned into one line, graceful drain."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import msgspec
import pytest
from asyncpg import Pool
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro.service import ServiceVerb, control_subject

from hodei_api.config import ApiSettings
from hodei_api.service import INTERNAL_MESSAGE, UNAVAILABLE_MESSAGE, ApiService
from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.api import ErrorCode, SubmitJobReply
from hodei_common.errors import ApiError, UnavailableError
from hodei_common.testing import assert_eventually
from tests.api.helpers import job, jobs_subject, row_counts

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

ENDPOINT_SUBJECTS = {
    *(subjects.api_any(endpoint) for endpoint in (
        subjects.JOBS_SUBMIT, subjects.JOBS_GET, subjects.JOBS_LIST, subjects.JOBS_CANCEL,
        subjects.JOBS_EVENTS, subjects.JOBS_EXPLAIN)),
    subjects.ADMIN_WORKERS_LIST, subjects.ADMIN_PROVIDERS_LIST, subjects.ADMIN_PROVIDERS_UPDATE,
}


async def gather_replies(nc: NATS, subject: str, count: int) -> list[dict[str, Any]]:
    """Publish one request and collect ``count`` replies (one per service instance)."""
    replies: list[Msg] = []
    inbox = nc.new_inbox()

    async def collect(msg: Msg) -> None:
        replies.append(msg)

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await assert_eventually(lambda: len(replies) >= count)
    finally:
        await sub.unsubscribe()
    return [json.loads(msg.data) for msg in replies]


async def test_service_answers_ping_as_hodei_api(api: ApiService, nc: NATS) -> None:
    reply = await nc.request(control_subject(ServiceVerb.PING, subjects.API_SERVICE_NAME),
                             b"", timeout=5)

    assert json.loads(reply.data)["name"] == subjects.API_SERVICE_NAME == "hodei-api"


async def test_endpoints_are_the_api_subjects_in_the_shared_queue_group(
    api: ApiService, nc: NATS
) -> None:
    reply = await nc.request(control_subject(ServiceVerb.INFO, subjects.API_SERVICE_NAME),
                             b"", timeout=5)

    endpoints = json.loads(reply.data)["endpoints"]
    assert {e["subject"] for e in endpoints} == ENDPOINT_SUBJECTS
    assert {e["queue_group"] for e in endpoints} == {subjects.API_QUEUE_GROUP}


async def test_replicas_share_requests_and_each_is_handled_once(
    api: ApiService, api_settings: ApiSettings, client: ApiClient, nc: NATS, pool: Pool
) -> None:
    second = ApiService(api_settings)
    run = asyncio.create_task(second.run())
    try:
        await second.ready.wait()
        replies = await asyncio.gather(*(client.submit(job(f"echo {i}")) for i in range(20)))
        stats = await gather_replies(
            nc, control_subject(ServiceVerb.STATS, subjects.API_SERVICE_NAME), 2)
    finally:
        await second.stop()
        await run

    assert len({r.job.id for r in replies}) == 20
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 20
    handled = [e["num_requests"] for s in stats for e in s["endpoints"]
               if e["subject"] == subjects.api_any(subjects.JOBS_SUBMIT)]
    assert len(handled) == 2
    assert sum(handled) == 20


async def test_client_says_the_api_is_not_running_when_nobody_answers(nc: NATS) -> None:
    with pytest.raises(UnavailableError, match="the Hodei API is not running"):
        await ApiClient(nc, timeout_s=2).list_providers()


async def test_unexpected_failure_is_one_line_internal_error_and_logged(
    client: ApiClient, pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    await pool.execute("ALTER TABLE jobs ADD CONSTRAINT no_boom CHECK (command <> 'boom')")
    before = await row_counts(pool)

    with (caplog.at_level(logging.ERROR, logger="hodei_common.endpoints"),
          pytest.raises(ApiError) as caught):
        await client.submit(job("boom", env={"TOKEN": "hunter2"}))

    assert (caught.value.code, caught.value.message) == (ErrorCode.INTERNAL, INTERNAL_MESSAGE)
    assert await row_counts(pool) == before
    assert "no_boom" in caplog.text
    assert "in submit_job" in caplog.text  # where it failed
    # PostgreSQL's DETAIL quotes the failing row; env values are secrets.
    assert "hunter2" not in caplog.text


async def test_database_outage_is_unavailable(api: ApiService, client: ApiClient) -> None:
    await api.pool.close()

    with pytest.raises(ApiError) as caught:
        await client.list_providers()

    assert (caught.value.code, caught.value.message) == (ErrorCode.UNAVAILABLE,
                                                         UNAVAILABLE_MESSAGE)


@pytest.mark.parametrize(("subject", "data"), [
    (jobs_subject(subjects.JOBS_SUBMIT), b"\x00\x01garbage"),
    (jobs_subject(subjects.JOBS_SUBMIT), b'{"command": "x", "env": {"K": 1}}'),
    (jobs_subject(subjects.JOBS_GET), b'{"id": "00000000-0000-0000-0000-000000000000"}'),
    (jobs_subject(subjects.JOBS_CANCEL), b"null"),
    (jobs_subject(subjects.JOBS_LIST), b'{"limit": "many"}'),
])
async def test_error_replies_never_carry_a_traceback(
    api: ApiService, nc: NATS, subject: str, data: bytes
) -> None:
    reply = await nc.request(subject, data, timeout=5)

    assert reply.headers is not None
    assert "Nats-Service-Error-Code" in reply.headers
    for text in (reply.data.decode(), *reply.headers.values()):
        assert "Traceback" not in text
        assert "\n" not in text
    assert set(json.loads(reply.data)) == {"code", "message"}


async def test_stop_lets_a_request_in_flight_finish(
    api: ApiService, client: ApiClient, pool: Pool
) -> None:
    queued = (await client.submit(job())).job
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", queued.id)
        cancel = asyncio.create_task(client.cancel(queued.id))
        await assert_eventually(lambda: api.requests_in_flight == 1)
        stop = asyncio.create_task(api.stop())
        await assert_eventually(lambda: api.micro.stopped.is_set())
        await tx.commit()

    assert (await cancel).cancelled is True
    await stop
    assert await pool.fetchval("SELECT state FROM jobs WHERE id = $1", queued.id) == "CANCELLED"


async def test_empty_body_means_defaults(api: ApiService, nc: NATS) -> None:
    reply = await nc.request(jobs_subject(subjects.JOBS_LIST), b"", timeout=5)

    assert json.loads(reply.data) == {"jobs": []}
    assert reply.headers is None or "Nats-Service-Error-Code" not in reply.headers


async def test_submit_reply_decodes_as_the_contract(api: ApiService, nc: NATS) -> None:
    reply = await nc.request(jobs_subject(subjects.JOBS_SUBMIT), b'{"command": "true"}', timeout=5)

    decoded = msgspec.json.decode(reply.data, type=SubmitJobReply)
    assert decoded.created is True
    assert decoded.job.command == "true"
