"""jobs.submit with an idle worker: the job goes to it at once, in the submit's statement, and
the api sends the assignment; never ahead of a job that waits, never to a worker that does not
fit or is held for another job."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from hodei_api.config import ApiSettings
from hodei_api.service import ApiService
from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Assignment
from hodei_common.contracts.jobs import JobCreated, JobState
from hodei_common.contracts.logs import LogStart
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.lifecycle import jobs
from hodei_common.settings import Settings
from hodei_common.testing.services import running
from tests.api.helpers import idle_worker, job

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def local_pool(pool: asyncpg.Pool, *, min_idle: int, max_workers: int = 4) -> None:
    await pool.execute("UPDATE provider_configs SET min_idle = $1, max_workers = $2 "
                       "WHERE name = 'local'", min_idle, max_workers)


@pytest.fixture
async def wakes(nc: NATS) -> AsyncIterator[list[str]]:
    """The bodies of the wake-up hints sent to the schedulers."""
    heard: list[str] = []

    async def hear(msg: Msg) -> None:
        heard.append(msg.data.decode())

    sub = await nc.subscribe(subjects.SCHEDULER_WAKE, cb=hear)
    yield heard
    await sub.unsubscribe()


async def heard(nc: NATS) -> None:
    """Whatever the api sent before its reply has reached this connection's callbacks."""
    await nc.flush()
    await asyncio.sleep(0.05)


async def last_on(js: JetStreamContext, stream: str, subject: str) -> bytes:
    msg = await js.get_last_msg(stream, subject)
    assert msg.data is not None
    return msg.data


async def test_a_job_goes_at_once_to_an_idle_worker_that_fits_it(
    client: ApiClient, pool: asyncpg.Pool, js: JetStreamContext, nc: NATS, wakes: list[str],
) -> None:
    await local_pool(pool, min_idle=0)
    worker_id = await idle_worker(pool)

    reply = await client.submit(job("echo hi", args=["a"], env={"K": "v"}, timeout_s=30.0))

    assert (reply.job.state, reply.job.worker_id) == (JobState.ASSIGNED, worker_id)
    row = await pool.fetchrow("SELECT state, worker_id, assigned_at, xmin FROM jobs "
                              "WHERE id = $1", reply.job.id)
    assert row is not None
    assert (row["state"], row["worker_id"]) == ("ASSIGNED", worker_id)
    assert row["assigned_at"] is not None
    worker = await pool.fetchrow("SELECT state, current_job_id, idle_since, xmin FROM workers "
                                 "WHERE id = $1", worker_id)
    assert (worker["state"], worker["current_job_id"], worker["idle_since"]) == (
        "BUSY", reply.job.id, None)
    audit = await pool.fetch("SELECT event_type, payload->>'worker_id' AS worker, xmin "
                             "FROM domain_events WHERE correlation_id = $1 ORDER BY seq",
                             str(reply.job.id))
    # Both events name the worker the statement picked.
    assert [(a["event_type"], a["worker"]) for a in audit] == [
        ("JobCreated", str(worker_id)), ("JobAssigned", str(worker_id))]
    outbox = await pool.fetch("SELECT subject, payload FROM outbox_events ORDER BY seq")
    assert [o["subject"] for o in outbox] == [
        subjects.job_event(reply.job.id, subjects.JOB_CREATED),
        subjects.job_event(reply.job.id, subjects.JOB_ASSIGNED)]
    assert msgspec.json.decode(outbox[0]["payload"], type=JobCreated).worker_id == worker_id
    saga = await pool.fetchrow("SELECT state, current_step FROM sagas "
                               "WHERE saga_type = 'execution' AND aggregate_id = $1", reply.job.id)
    assert (saga["state"], saga["current_step"]) == ("RUNNING", "start")
    # One statement, one transaction: the job, its worker and its events.
    assert row["xmin"] == worker["xmin"] == audit[0]["xmin"] == audit[1]["xmin"]

    # The api sent the assignment, with the platform's log cap, and marked the attempt.
    assignment = msgspec.json.decode(await last_on(
        js, subjects.WORKER_ASSIGN_STREAM, subjects.worker_assign(worker_id)), type=Assignment)
    assert (assignment.job_id, assignment.attempt, assignment.worker_id) == (
        reply.job.id, 1, worker_id)
    assert (assignment.command, assignment.args, assignment.env, assignment.timeout_s) == (
        "echo hi", ["a"], {"K": "v"}, 30.0)
    assert assignment.log_max_bytes == 1 << 30
    start = msgspec.json.decode(await last_on(
        js, subjects.LOGS_STREAM, subjects.platform_logs(DEFAULT_NAMESPACE, reply.job.id)),
        type=LogStart)
    assert (start.job_id, start.attempt, start.worker_id) == (reply.job.id, 1, worker_id)
    # A reusable worker comes back by itself, and no warm pool is kept: no pass is needed.
    await heard(nc)
    assert wakes == []


async def test_a_job_waits_behind_one_that_waits_for_the_same_kind_of_worker(
    client: ApiClient, pool: asyncpg.Pool, wakes: list[str], nc: NATS,
) -> None:
    first = (await client.submit(job())).job
    assert first.state is JobState.QUEUED
    worker_id = await idle_worker(pool)

    second = (await client.submit(job())).job

    assert (second.state, second.worker_id) == (JobState.QUEUED, None)
    assert await pool.fetchval("SELECT state FROM workers WHERE id = $1", worker_id) == "READY"
    await heard(nc)
    assert wakes == [str(first.id), str(second.id)]  # the scheduler pairs them, oldest first


async def test_a_worker_made_with_other_limits_is_not_taken(
    client: ApiClient, pool: asyncpg.Pool,
) -> None:
    bigger = await idle_worker(pool, cpus=2.0)

    reply = await client.submit(job())

    assert (reply.job.state, reply.job.worker_id) == (JobState.QUEUED, None)
    assert await pool.fetchval("SELECT state FROM workers WHERE id = $1", bigger) == "READY"
    assert (await client.submit(job(cpus=2.0))).job.worker_id == bigger


async def test_a_worker_held_for_a_job_that_waits_is_not_taken(
    client: ApiClient, pool: asyncpg.Pool,
) -> None:
    # A job requeued with a back-off waits without barring the way; the worker made for it
    # is still its own.
    backing_off = (await client.submit(job())).job
    await pool.execute("UPDATE jobs SET not_before = now() + interval '1 hour' WHERE id = $1",
                       backing_off.id)
    held = await idle_worker(pool, for_job_id=backing_off.id)

    reply = await client.submit(job())

    assert (reply.job.state, reply.job.worker_id) == (JobState.QUEUED, None)
    assert await pool.fetchval("SELECT state FROM workers WHERE id = $1", held) == "READY"
    # With that one backing off as well, a worker held for nobody is taken at once.
    await pool.execute("UPDATE jobs SET not_before = now() + interval '1 hour' WHERE id = $1",
                       reply.job.id)
    free = await idle_worker(pool)
    assert (await client.submit(job())).job.worker_id == free


async def test_taking_an_ephemeral_worker_or_one_of_a_pool_to_keep_wakes_the_scheduler(
    client: ApiClient, pool: asyncpg.Pool, wakes: list[str], nc: NATS,
) -> None:
    await local_pool(pool, min_idle=0)
    await idle_worker(pool, mode="ephemeral")
    ephemeral = (await client.submit(job())).job
    assert ephemeral.state is JobState.ASSIGNED
    await local_pool(pool, min_idle=2, max_workers=4)
    await idle_worker(pool)
    pooled = (await client.submit(job())).job
    assert pooled.state is JobState.ASSIGNED
    # A pool already at its provider's max_workers cannot grow: nothing to ask for.
    await local_pool(pool, min_idle=2, max_workers=3)
    await idle_worker(pool)
    full = (await client.submit(job())).job
    assert full.state is JobState.ASSIGNED

    await heard(nc)
    assert wakes == [str(ephemeral.id), str(pooled.id)]


async def test_with_assignment_at_submit_off_every_job_waits_for_the_scheduler(
    settings: Settings, pool: asyncpg.Pool, nc: NATS, wakes: list[str],
) -> None:
    worker_id = await idle_worker(pool)
    api = ApiService(ApiSettings(**settings.model_dump(), api_assign_at_submit=False))
    async with running([api]):
        reply = await ApiClient(nc, timeout_s=5.0).submit(job())
    assert (reply.job.state, reply.job.worker_id) == (JobState.QUEUED, None)
    assert await pool.fetchval("SELECT state FROM workers WHERE id = $1", worker_id) == "READY"
    await heard(nc)
    assert wakes == [str(reply.job.id)]


async def test_jobs_submitted_together_take_the_idle_workers_in_order_each_its_own(
    pool: asyncpg.Pool,
) -> None:
    await local_pool(pool, min_idle=0)
    first, second = await idle_worker(pool), await idle_worker(pool)
    await pool.execute("UPDATE workers SET idle_since = now() - interval '1 minute' "
                       "WHERE id = $1", first)  # the longest idle goes first
    bigger = await idle_worker(pool, cpus=2.0)
    requests = [job("echo a1"), job("echo c1", cpus=2.0), job("echo a2"), job("echo a3"),
                job("echo c2", cpus=2.0), job("echo k1", idempotency_key="k"),
                job("echo k2", idempotency_key="k")]
    new = [jobs.new_job(r, job_id=uuid.uuid4(), namespace=DEFAULT_NAMESPACE, actor="api",
                        assign_now=True) for r in requests]

    async with pool.acquire() as conn:
        rows = await jobs.submit_many(conn, new, assign_now=True)

    # One row per job inserted, in order; the repeated idempotency key kept the second out.
    assert [r["command"] for r in rows] == ["echo a1", "echo c1", "echo a2", "echo a3",
                                            "echo c2", "echo k1"]
    assert [r["worker_id"] for r in rows] == [first, bigger, second, None, None, None]
    assert [r["state"] for r in rows] == ["ASSIGNED"] * 3 + ["QUEUED"] * 3
    busy = await pool.fetch("SELECT id, state, current_job_id FROM workers ORDER BY id")
    assert {(w["id"], w["state"], w["current_job_id"]) for w in busy} == {
        (r["worker_id"], "BUSY", r["id"]) for r in rows[:3]}
    # Each job's own events, naming its own worker, recorded in order and published after.
    audit = await pool.fetch("SELECT correlation_id, event_type, payload->>'worker_id' AS worker "
                             "FROM domain_events ORDER BY seq")
    expected = []
    for row in rows:
        expected.append((str(row["id"]), "JobCreated", row["worker_id"] and str(row["worker_id"])))
        if row["worker_id"] is not None:
            expected.append((str(row["id"]), "JobAssigned", str(row["worker_id"])))
    assert [(a["correlation_id"], a["event_type"], a["worker"]) for a in audit] == expected
    assert await pool.fetchval("SELECT count(*) FROM outbox_events") == len(expected)
    sagas = await pool.fetch("SELECT aggregate_id FROM sagas WHERE saga_type = 'execution'")
    assert {s["aggregate_id"] for s in sagas} == {r["id"] for r in rows[:3]}


async def test_submits_that_arrive_together_are_stored_together(
    client: ApiClient, pool: asyncpg.Pool,
) -> None:
    await local_pool(pool, min_idle=0)
    workers = {await idle_worker(pool) for _ in range(3)}

    replies = await asyncio.gather(*(client.submit(job(f"echo {i}")) for i in range(20)),
                                   client.submit(job("echo once", idempotency_key="once")),
                                   client.submit(job("echo once", idempotency_key="once")))

    *plain, repeated, repeat = replies
    assert repeated.job.id == repeat.job.id
    assert {repeated.created, repeat.created} == {True, False}
    assigned = {r.job.worker_id: r.job.id for r in replies if r.job.worker_id is not None}
    assert set(assigned) == workers  # every idle worker went to exactly one job
    rows = await pool.fetch("SELECT id, state, xmin::text::bigint AS tx FROM jobs")
    assert len(rows) == 21
    assert sum(r["state"] == "ASSIGNED" for r in rows) == 3
    # Fewer transactions than jobs: those that waited for a statement went in one together.
    assert len({r["tx"] for r in rows}) < len(rows)
    for reply in plain:
        events = await pool.fetch("SELECT event_type FROM domain_events WHERE correlation_id = $1",
                                  str(reply.job.id))
        assert sorted(e["event_type"] for e in events) == (
            ["JobAssigned", "JobCreated"] if reply.job.worker_id else ["JobCreated"])
