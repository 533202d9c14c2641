"""Namespaces: a caller sees and touches only its namespace's jobs, named by the subject it
asks on; another namespace's job answers exactly as an unknown id does."""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
import pytest
from asyncpg import Pool
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.api import ErrorCode
from hodei_common.contracts.jobs import Job, JobState
from hodei_common.contracts.namespaces import NAMESPACE_RULE
from hodei_common.errors import ApiError
from hodei_common.runner import HodeiService
from tests.api.helpers import job, jobs_subject, row_counts

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

ONE_JOB_ENDPOINTS = [subjects.JOBS_GET, subjects.JOBS_CANCEL, subjects.JOBS_EVENTS,
                     subjects.JOBS_EXPLAIN]
ENDPOINTS = [subjects.JOBS_SUBMIT, subjects.JOBS_LIST, *ONE_JOB_ENDPOINTS]


@pytest.fixture
def team_a(client: ApiClient) -> ApiClient:
    return ApiClient(client.nc, timeout_s=5.0, namespace="team-a")


@pytest.fixture
def team_b(client: ApiClient) -> ApiClient:
    return ApiClient(client.nc, timeout_s=5.0, namespace="team-b")


async def reply_bytes(nc: NATS, subject: str, request: dict[str, Any]) -> tuple[bytes, str]:
    """A reply as sent: its body and its headers, as bytes and text to compare."""
    msg = await nc.request(subject, msgspec.json.encode(request), timeout=5)
    return bytes(msg.data), json.dumps(msg.headers, sort_keys=True)


def naming(reply: tuple[bytes, str], unknown: uuid.UUID, job_id: uuid.UUID
           ) -> tuple[bytes, str]:
    """``reply`` with ``job_id`` where it says ``unknown``."""
    data, headers = reply
    return (data.replace(str(unknown).encode(), str(job_id).encode()),
            headers.replace(str(unknown), str(job_id)))


async def job_rows(pool: Pool) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch("SELECT * FROM jobs ORDER BY id")]


async def running(pool: Pool, submitted: Job) -> Job:
    await pool.execute("UPDATE jobs SET state = 'RUNNING' WHERE id = $1", submitted.id)
    return submitted


@pytest.mark.parametrize("endpoint", ONE_JOB_ENDPOINTS)
@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.RUNNING])
async def test_another_namespaces_job_answers_byte_for_byte_as_an_unknown_id(
    team_b: ApiClient, nc: NATS, pool: Pool, endpoint: str, state: JobState
) -> None:
    theirs = (await team_b.submit(job("sleep 100"))).job
    if state is JobState.RUNNING:
        await running(pool, theirs)
    unknown = uuid.uuid4()
    rows, counts = await job_rows(pool), await row_counts(pool)

    other = await reply_bytes(nc, jobs_subject(endpoint, "team-a"), {"id": str(theirs.id)})
    missing = await reply_bytes(nc, jobs_subject(endpoint, "team-a"), {"id": str(unknown)})

    assert json.loads(other[0]) == {"code": "not_found", "message": f"job {theirs.id} not found"}
    assert other == naming(missing, unknown, theirs.id)
    assert await job_rows(pool) == rows
    assert await row_counts(pool) == counts
    assert (await team_b.get(theirs.id)).state is state


async def test_a_namespace_lists_only_its_own_jobs(
    team_a: ApiClient, team_b: ApiClient, pool: Pool
) -> None:
    mine = (await team_a.submit(job("echo a"))).job
    theirs = await running(pool, (await team_b.submit(job("echo b"))).job)
    mine_running = await running(pool, (await team_a.submit(job("echo a2"))).job)

    listed = await team_a.list_jobs()
    listed_running = await team_a.list_jobs(state=JobState.RUNNING)

    assert [j.id for j in listed] == [mine_running.id, mine.id]
    assert {j.namespace for j in listed} == {"team-a"}
    assert [j.id for j in listed_running] == [mine_running.id]
    assert [j.id for j in await team_b.list_jobs()] == [theirs.id]


async def test_a_submitted_job_is_its_subjects_namespace(
    team_a: ApiClient, pool: Pool
) -> None:
    submitted = (await team_a.submit(job())).job

    assert submitted.namespace == "team-a"
    stored = await pool.fetchval("SELECT namespace FROM jobs WHERE id = $1", submitted.id)
    assert stored == "team-a"
    created = await pool.fetchval(
        "SELECT payload->>'namespace' FROM domain_events WHERE aggregate_id = $1 "
        "AND event_type = 'JobCreated'", submitted.id)
    assert created == "team-a"


async def test_a_namespace_in_the_body_is_ignored(client: ApiClient, nc: NATS) -> None:
    data, _ = await reply_bytes(nc, jobs_subject(subjects.JOBS_SUBMIT, "team-a"),
                                {"command": "true", "namespace": "team-b"})

    assert json.loads(data)["job"]["namespace"] == "team-a"


async def test_the_same_idempotency_key_in_two_namespaces_is_two_jobs(
    team_a: ApiClient, team_b: ApiClient, pool: Pool
) -> None:
    first_a = await team_a.submit(job("echo a", idempotency_key="deploy-1"))
    first_b = await team_b.submit(job("echo b", idempotency_key="deploy-1"))
    again_a = await team_a.submit(job("echo a", idempotency_key="deploy-1"))
    again_b = await team_b.submit(job("echo b", idempotency_key="deploy-1"))

    assert (first_a.created, first_b.created, again_a.created, again_b.created) == (
        True, True, False, False)
    assert first_a.job.id != first_b.job.id
    assert (again_a.job.id, again_a.job.command) == (first_a.job.id, "echo a")
    assert (again_b.job.id, again_b.job.command) == (first_b.job.id, "echo b")
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 2


async def test_an_id_taken_in_another_namespace_is_refused_as_one_taken_in_ones_own(
    team_a: ApiClient, team_b: ApiClient, pool: Pool
) -> None:
    theirs = (await team_b.submit(job("echo b", id=uuid.uuid4()))).job
    mine = (await team_a.submit(job("echo a", id=uuid.uuid4()))).job
    before = await row_counts(pool)

    with pytest.raises(ApiError) as across:
        await team_a.submit(job("echo b", id=theirs.id))
    with pytest.raises(ApiError) as within:
        await team_a.submit(job("echo other", id=mine.id))

    assert (across.value.code, across.value.message) == (
        ErrorCode.INVALID_ARGUMENT, f"job id {theirs.id} is already taken by another job")
    assert across.value.message.replace(str(theirs.id), str(mine.id)) == within.value.message
    assert await row_counts(pool) == before


@pytest.mark.parametrize("token", [
    "Team-A", "team_a", "-team", "team-", "a" * 64, "%", "é",
])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_malformed_namespace_is_refused_in_one_line_and_writes_nothing(
    client: ApiClient, nc: NATS, pool: Pool, endpoint: str, token: str
) -> None:
    before = await row_counts(pool)
    request = {"command": "true", "id": str(uuid.uuid4())}

    data, _ = await reply_bytes(nc, f"{subjects.API_PREFIX}.{token}.{endpoint}", request)

    shown = token if len(token) <= 64 else token[:64] + "..."
    assert json.loads(data) == {
        "code": "invalid_argument",
        "message": f"namespace {shown!r} is not valid: a namespace is {NAMESPACE_RULE}",
    }
    assert await row_counts(pool) == before


async def test_admin_subjects_answer_and_span_namespaces(
    client: ApiClient, nc: NATS
) -> None:
    providers, _ = await reply_bytes(nc, subjects.ADMIN_PROVIDERS_LIST, {})
    workers, _ = await reply_bytes(nc, subjects.ADMIN_WORKERS_LIST, {})
    updated, _ = await reply_bytes(nc, subjects.ADMIN_PROVIDERS_UPDATE,
                                   {"name": "local", "max_workers": 3})

    assert "local" in {p["name"] for p in json.loads(providers)["providers"]}
    assert json.loads(workers) == {"workers": []}
    assert json.loads(updated)["provider"]["max_workers"] == 3


@pytest.mark.parametrize("old", [
    f"{subjects.API_PREFIX}.{subjects.JOBS_GET}",
    *(admin.replace(subjects.ADMIN_PREFIX, subjects.API_PREFIX)
      for admin in (subjects.ADMIN_WORKERS_LIST, subjects.ADMIN_PROVIDERS_UPDATE)),
])
async def test_the_unnamespaced_subjects_have_no_responder(
    api: HodeiService, nc: NATS, old: str
) -> None:
    with pytest.raises(NoRespondersError):
        await nc.request(old, b"{}", timeout=5)
