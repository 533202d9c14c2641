"""Dispatch and job progress: queued jobs get workers, agents' reports move jobs to the end."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from hodei_api.config import ApiSettings
from hodei_api.service import ApiService
from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Assignment, Outcome, StatusKind
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.jobs import Job, JobState
from hodei_common.contracts.logs import LogEnd, LogRecord
from hodei_common.relay import RelayService, RelaySettings
from hodei_common.runner import HodeiService
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_common.testing.services import running
from hodei_scheduler.config import SchedulerSettings
from hodei_scheduler.service import SchedulerService
from tests.api.helpers import idle_worker
from tests.scheduler.conftest import make_ready, report

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def workers(pool: asyncpg.Pool, state: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM workers WHERE state = $1 ORDER BY created_at", state)


async def job_state(pool: asyncpg.Pool, job_id: uuid.UUID) -> str:
    return str(await pool.fetchval("SELECT state FROM jobs WHERE id = $1", job_id))


async def event_types(pool: asyncpg.Pool, aggregate_id: uuid.UUID) -> list[str]:
    rows = await pool.fetch(
        "SELECT event_type FROM domain_events WHERE aggregate_id = $1 ORDER BY seq", aggregate_id)
    return [r["event_type"] for r in rows]


async def assigned_job(api: ApiClient, pool: asyncpg.Pool, command: str) -> tuple[Job, UUID]:
    """Submit ``command``, play the provisioner (its worker READY), wait for the assignment."""
    job = (await api.submit(SubmitJob(command=command))).job
    worker_id = (await assert_eventually(lambda: workers(pool, "CREATING")))[0]["id"]
    await make_ready(pool, worker_id)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "ASSIGNED"), within_s=5)
    return job, worker_id


async def test_a_queued_job_gets_one_new_worker_then_the_assignment(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job = (await api.submit(SubmitJob(command="echo hi", env={"K": "v"}))).job
    creating = await assert_eventually(lambda: workers(pool, "CREATING"))
    assert len(creating) == 1
    worker_id = creating[0]["id"]
    assert creating[0]["for_job_id"] == job.id
    assert await event_types(pool, worker_id) == ["ProvisionRequested"]
    sub = await js.subscribe(subjects.worker_assign(worker_id), ordered_consumer=True)
    await make_ready(pool, worker_id)
    msg = await sub.next_msg(timeout=5)
    assignment = msgspec.json.decode(msg.data, type=Assignment)
    assert (assignment.job_id, assignment.attempt, assignment.worker_id) == (job.id, 1, worker_id)
    assert assignment.command == "echo hi"
    assert assignment.env == {"K": "v"}
    assert await job_state(pool, job.id) == "ASSIGNED"
    assert (await workers(pool, "BUSY"))[0]["current_job_id"] == job.id
    assert len(await workers(pool, "CREATING")) == 0  # never more requests than waiting jobs


async def test_reports_take_a_job_to_succeeded_and_retire_its_ephemeral_worker(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job, worker_id = await assigned_job(api, pool, "echo hi")
    await report(js, worker_id, job.id, 1, StatusKind.ACCEPTED)
    await report(js, worker_id, job.id, 1, StatusKind.STARTED)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "RUNNING"))
    await report(js, worker_id, job.id, 1, StatusKind.FINISHED, Outcome.SUCCEEDED, exit_code=0)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "SUCCEEDED"))
    row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job.id)
    assert row["exit_code"] == 0
    assert row["started_at"] <= row["completed_at"]
    assert await event_types(pool, job.id) == [
        "JobCreated", "JobAssigned", "JobAccepted", "JobStarted", "JobSucceeded"]
    worker = await pool.fetchrow("SELECT * FROM workers WHERE id = $1", worker_id)
    assert worker["state"] == "TERMINATING"
    assert worker["current_job_id"] is None
    assert (await event_types(pool, worker_id))[-1] == "WorkerTerminating"


async def test_a_started_report_alone_also_records_the_acceptance_once(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job, worker_id = await assigned_job(api, pool, "echo hi")
    for _ in range(2):  # a redelivered report changes nothing
        await report(js, worker_id, job.id, 1, StatusKind.STARTED)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "RUNNING"))
    await report(js, worker_id, job.id, 1, StatusKind.FINISHED, Outcome.SUCCEEDED, exit_code=0)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "SUCCEEDED"))
    row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job.id)
    assert row["accepted_at"] == row["started_at"]
    assert await event_types(pool, job.id) == [
        "JobCreated", "JobAssigned", "JobAccepted", "JobStarted", "JobSucceeded"]


async def test_a_finished_report_that_says_when_the_job_started_records_the_start(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job, worker_id = await assigned_job(api, pool, "true")
    started_at = datetime.now(UTC)
    await report(js, worker_id, job.id, 1, StatusKind.FINISHED, Outcome.SUCCEEDED, exit_code=0,
                 started_at=started_at)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "SUCCEEDED"))
    row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job.id)
    assert row["started_at"] == row["accepted_at"] == started_at
    assert row["completed_at"] >= started_at
    assert await event_types(pool, job.id) == [
        "JobCreated", "JobAssigned", "JobAccepted", "JobStarted", "JobSucceeded"]


@pytest.mark.parametrize(
    ("max_jobs", "leaving", "state", "event"),
    [(None, None, "READY", "WorkerReady"),
     (None, "its agent is stopping (SIGTERM)", "TERMINATING", "WorkerTerminating"),
     (1, None, "TERMINATING", "WorkerTerminating")],
)
async def test_a_reusable_worker_is_freed_after_its_job_unless_it_leaves_or_is_used_up(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext,
    max_jobs: int | None, leaving: str | None, state: str, event: str,
) -> None:
    await pool.execute("UPDATE provider_configs SET worker_mode = 'reusable', settings = $1 "
                       "WHERE name = 'local'", {} if max_jobs is None else {"max_jobs": max_jobs})
    job, worker_id = await assigned_job(api, pool, "true")
    await report(js, worker_id, job.id, 1, StatusKind.FINISHED, Outcome.SUCCEEDED, exit_code=0,
                 leaving=leaving)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "SUCCEEDED"))
    worker = await pool.fetchrow("SELECT * FROM workers WHERE id = $1", worker_id)
    assert (worker["state"], worker["jobs_run"], worker["current_job_id"]) == (state, 1, None)
    last = await pool.fetchrow(
        "SELECT event_type, payload FROM domain_events WHERE aggregate_id = $1 "
        "ORDER BY seq DESC LIMIT 1", worker_id)
    assert last["event_type"] == event
    if leaving is not None:
        assert last["payload"]["reason"] == leaving


async def test_a_job_that_never_started_is_still_accepted_before_it_ends(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job, worker_id = await assigned_job(api, pool, "echo hi")
    await report(js, worker_id, job.id, 1, StatusKind.FINISHED, Outcome.FAILED,
                 error="cannot start the command: boom")
    await assert_eventually(lambda: _is(job_state(pool, job.id), "FAILED"))
    assert await event_types(pool, job.id) == [
        "JobCreated", "JobAssigned", "JobAccepted", "JobFailed"]


@pytest.mark.parametrize(
    ("outcome", "exit_code", "state"),
    [(Outcome.FAILED, 3, "FAILED"), (Outcome.TIMED_OUT, None, "TIMED_OUT"),
     (Outcome.CANCELLED, None, "CANCELLED")],
)
async def test_each_outcome_ends_the_job_in_its_state_with_an_end_of_log_marker(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext,
    outcome: Outcome, exit_code: int | None, state: str,
) -> None:
    job, worker_id = await assigned_job(api, pool, "x")
    await report(js, worker_id, job.id, 1, StatusKind.FINISHED, outcome, exit_code=exit_code,
                 error="boom" if outcome is Outcome.FAILED else None)
    await assert_eventually(lambda: _is(job_state(pool, job.id), state))

    async def end_marker() -> LogEnd | None:
        try:
            last = await js.get_last_msg(subjects.LOGS_STREAM,
                                         subjects.platform_logs(job.namespace, job.id))
        except Exception:
            return None
        message = msgspec.json.decode(last.data, type=LogRecord)
        return message if isinstance(message, LogEnd) else None

    end = await assert_eventually(end_marker)
    assert end.state is JobState(state)
    assert end.exit_code == exit_code


async def test_reports_from_another_attempt_or_worker_change_nothing(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job, worker_id = await assigned_job(api, pool, "x")
    await report(js, worker_id, job.id, 7, StatusKind.FINISHED, Outcome.SUCCEEDED, exit_code=0)
    await report(js, uuid.uuid4(), job.id, 1, StatusKind.FINISHED, Outcome.SUCCEEDED, 0)
    await report(js, worker_id, job.id, 1, StatusKind.STARTED)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "RUNNING"))
    assert "JobSucceeded" not in await event_types(pool, job.id)


async def test_higher_priority_then_older_jobs_are_assigned_first(
    core: list[HodeiService], pool: asyncpg.Pool
) -> None:
    await pool.execute("UPDATE provider_configs SET max_workers = 0 WHERE name = 'local'")
    ids = {}
    for name, priority in [("old-low", 0), ("new-high", 5), ("newer-low", 0)]:
        ids[name] = uuid.uuid4()
        await pool.execute(
            "INSERT INTO jobs (id, name, command, timeout_s, provider, priority) "
            "VALUES ($1, $2, 'true', 10, 'local', $3)", ids[name], name, priority)
    order = []
    for _ in range(3):
        worker_id = uuid.uuid4()
        await pool.execute(
            "INSERT INTO workers (id, provider, state, idle_since) VALUES ($1, 'local', 'READY', "
            "now())", worker_id)

        async def assigned(w: uuid.UUID = worker_id) -> str | None:
            return await pool.fetchval("SELECT name FROM jobs WHERE worker_id = $1", w)

        order.append(await assert_eventually(assigned, within_s=5))
    assert order == ["new-high", "old-low", "newer-low"]


async def test_a_job_whose_events_were_all_lost_is_still_assigned_within_a_second(
    core: list[HodeiService], pool: asyncpg.Pool
) -> None:
    worker_id = uuid.uuid4()
    job_id = uuid.uuid4()
    await pool.execute("INSERT INTO workers (id, provider, state, idle_since) "
                       "VALUES ($1, 'local', 'READY', now())", worker_id)
    await pool.execute("INSERT INTO jobs (id, command, timeout_s, provider) "
                       "VALUES ($1, 'true', 10, 'local')", job_id)  # no event at all
    await assert_eventually(lambda: _is(job_state(pool, job_id), "ASSIGNED"), within_s=1.0)


async def test_a_wake_up_hint_alone_gets_a_job_assigned_without_waiting_for_a_pass(
    settings: Settings, pool: asyncpg.Pool, nc: NATS
) -> None:
    scheduler = SchedulerService(SchedulerSettings(**settings.model_dump(),
                                                   dispatch_interval_s=3600))
    worker_id, job_id = uuid.uuid4(), uuid.uuid4()
    async with running([scheduler]):
        await asyncio.sleep(0.3)  # the pass at start is over: the next is an hour away
        await pool.execute("INSERT INTO workers (id, provider, state, idle_since) "
                           "VALUES ($1, 'local', 'READY', now())", worker_id)
        await pool.execute("INSERT INTO jobs (id, command, timeout_s, provider) "
                           "VALUES ($1, 'true', 10, 'local')", job_id)  # no event at all
        assert await job_state(pool, job_id) == "QUEUED"
        await nc.publish(subjects.SCHEDULER_WAKE, b"")
        await assert_eventually(lambda: _is(job_state(pool, job_id), "ASSIGNED"), within_s=2.0)


def count_passes(scheduler: SchedulerService) -> list[float]:
    """When each dispatch pass of ``scheduler`` starts from now on."""
    passes: list[float] = []
    dispatch_pass = scheduler.dispatcher.dispatch_pass

    async def counted() -> int:
        passes.append(asyncio.get_running_loop().time())
        return await dispatch_pass()

    scheduler.dispatcher.dispatch_pass = counted  # type: ignore[method-assign]
    return passes


async def test_a_queued_job_s_hint_starts_one_pass_and_its_created_event_none(
    settings: Settings, pool: asyncpg.Pool, nc: NATS, js: JetStreamContext
) -> None:
    base = settings.model_dump()
    scheduler = SchedulerService(SchedulerSettings(**base, dispatch_interval_s=3600))
    async with running([ApiService(ApiSettings(**base)), RelayService(RelaySettings(**base)),
                        scheduler]):
        await asyncio.sleep(0.3)  # the pass at start is over: the next is an hour away
        passes = count_passes(scheduler)
        job = (await ApiClient(nc, timeout_s=5.0).submit(SubmitJob(command="true"))).job
        await assert_eventually(lambda: _stored(
            js, subjects.JOB_EVENTS_STREAM, subjects.job_event(job.id, subjects.JOB_CREATED)))
        await assert_eventually(lambda: _count(workers(pool, "CREATING"), 1))  # the pass's
        await asyncio.sleep(0.1)  # a second pass, poked meanwhile, would start within 5 ms
        assert len(passes) == 1, "the hint's pass saw the job: its event must not start another"
        assert await dispatch_deliveries(js, subjects.JOB_EVENTS_STREAM) == 0


@contextlib.asynccontextmanager
async def idle_reusable_worker(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[tuple[SchedulerService, UUID]]:
    """The api, relay and a scheduler whose next periodic pass is an hour away, and a READY
    reusable worker of the local provider."""
    base = settings.model_dump()
    scheduler = SchedulerService(SchedulerSettings(**base, dispatch_interval_s=3600))
    async with running([ApiService(ApiSettings(**base)), RelayService(RelaySettings(**base)),
                        scheduler]):
        worker_id = await idle_worker(pool)
        await asyncio.sleep(0.3)  # the pass at start is over: the next is an hour away
        yield scheduler, worker_id


async def dispatch_deliveries(js: JetStreamContext, stream: str) -> int:
    """How many messages of ``stream`` the scheduler's dispatch durable was sent: a job's
    created event and a worker's ready event come to every job, and the scheduler is sent
    neither (hints and its own pokes stand for them)."""
    info = await js.consumer_info(stream, subjects.SCHEDULER_DISPATCH_CONSUMER)
    return int(info.delivered.consumer_seq or 0) if info.delivered is not None else 0


async def test_a_job_assigned_at_submit_starts_no_pass_nor_wakes_the_scheduler(
    settings: Settings, pool: asyncpg.Pool, nc: NATS, js: JetStreamContext
) -> None:
    """The api gave the job to an idle reusable worker itself: neither its wake-up hint nor its
    created event (which names the worker) starts a dispatch pass, nothing waits."""
    async with idle_reusable_worker(settings, pool) as (scheduler, worker_id):
        passes = count_passes(scheduler)
        job = (await ApiClient(nc, timeout_s=5.0).submit(SubmitJob(command="true"))).job
        assert (job.state, job.worker_id) == (JobState.ASSIGNED, worker_id)
        await assert_eventually(lambda: _stored(
            js, subjects.JOB_EVENTS_STREAM, subjects.job_event(job.id, subjects.JOB_CREATED)))
        await asyncio.sleep(0.1)  # a pass, poked meanwhile, would start within 5 ms
        assert passes == [], "nothing waits: no pass is needed"
        assert await dispatch_deliveries(js, subjects.JOB_EVENTS_STREAM) == 0


@pytest.mark.parametrize("waiting", [False, True])
async def test_a_freed_worker_starts_a_pass_only_when_a_job_of_its_provider_waits(
    settings: Settings, pool: asyncpg.Pool, nc: NATS, js: JetStreamContext, waiting: bool,
) -> None:
    """A reusable worker freed by its job's end: with nothing queued, neither the end nor the
    worker's ready event starts a dispatch pass; with a job queued, one pass gives it the
    worker."""
    await pool.execute("UPDATE provider_configs SET max_workers = 1 WHERE name = 'local'")
    async with idle_reusable_worker(settings, pool) as (scheduler, worker_id):
        job = (await ApiClient(nc, timeout_s=5.0).submit(SubmitJob(command="true"))).job
        assert job.worker_id == worker_id
        queued_id = uuid.uuid4()
        if waiting:  # queued behind it, with no event: only a pass can give it the worker
            await pool.execute("INSERT INTO jobs (id, command, timeout_s, provider) "
                               "VALUES ($1, 'true', 10, 'local')", queued_id)
        passes = count_passes(scheduler)
        await report(js, worker_id, job.id, 1, StatusKind.FINISHED, Outcome.SUCCEEDED,
                     exit_code=0)
        await assert_eventually(lambda: _is(job_state(pool, job.id), "SUCCEEDED"))
        await assert_eventually(lambda: _stored(
            js, subjects.WORKER_EVENTS_STREAM, subjects.WORKER_READY))
        await asyncio.sleep(0.1)  # a pass, poked meanwhile, would start within 5 ms
        assert await dispatch_deliveries(js, subjects.WORKER_EVENTS_STREAM) == 0
        if waiting:
            assert len(passes) == 1
            assert await job_state(pool, queued_id) == "ASSIGNED"
        else:
            assert passes == [], "nothing waits: no pass is needed"


async def test_a_job_whose_worker_was_held_locked_during_its_pass_is_assigned_soon_after(
    settings: Settings, pool: asyncpg.Pool, nc: NATS
) -> None:
    """A pass skips rows another statement holds (a heartbeat's update of the workers), and
    the job's own event starts no second pass once the hint's pass began: the scheduler
    looks again by itself, not only at the next periodic pass (an hour away here)."""
    base = settings.model_dump()
    scheduler = SchedulerService(SchedulerSettings(**base, dispatch_interval_s=3600))
    worker_id = uuid.uuid4()
    async with running([ApiService(ApiSettings(**base)), RelayService(RelaySettings(**base)),
                        scheduler]):
        await pool.execute("INSERT INTO workers (id, provider, state, idle_since) "
                           "VALUES ($1, 'local', 'READY', now())", worker_id)
        await asyncio.sleep(0.3)  # the pass at start is over: the next is an hour away
        async with pool.acquire() as holder:
            held = holder.transaction()
            await held.start()
            await holder.execute("SELECT 1 FROM workers WHERE id = $1 FOR UPDATE", worker_id)
            job = (await ApiClient(nc, timeout_s=5.0).submit(SubmitJob(command="true"))).job
            await asyncio.sleep(0.03)  # the hint's pass and a first look again, both skipping it
            assert await job_state(pool, job.id) == "QUEUED"
            await held.rollback()
        await assert_eventually(lambda: _is(job_state(pool, job.id), "ASSIGNED"), within_s=2.0)


async def _stored(js: JetStreamContext, stream: str, subject: str) -> int | None:
    try:
        return int((await js.get_last_msg(stream, subject)).seq or 0) or None
    except NotFoundError:
        return None


async def test_provisioning_never_exceeds_max_workers_and_jobs_wait_queued(
    api: ApiClient, pool: asyncpg.Pool
) -> None:
    await pool.execute("UPDATE provider_configs SET max_workers = 2 WHERE name = 'local'")
    jobs = [(await api.submit(SubmitJob(command="x"))).job for _ in range(5)]
    await assert_eventually(lambda: _count(workers(pool, "CREATING"), 2))
    states = [await job_state(pool, j.id) for j in jobs]
    assert states == ["QUEUED"] * 5
    await api.cancel(jobs[0].id)
    assert len(await workers(pool, "CREATING")) == 2


async def test_a_job_with_limits_gets_a_worker_made_with_them_not_a_default_one(
    api: ApiClient, pool: asyncpg.Pool
) -> None:
    default = (await api.submit(SubmitJob(command="x"))).job
    limited = (await api.submit(SubmitJob(command="y", cpus=0.5, memory_bytes=64 * 2**20))).job
    await assert_eventually(lambda: _count(workers(pool, "CREATING"), 2))
    creating = await workers(pool, "CREATING")
    limits = sorted((w["cpus"] or 0, w["memory_bytes"] or 0) for w in creating)
    assert limits == [(0, 0), (0.5, 64 * 2**20)]
    default_worker = next(w["id"] for w in creating if w["cpus"] is None)
    await make_ready(pool, default_worker)
    await assert_eventually(lambda: _is(job_state(pool, default.id), "ASSIGNED"))
    assert await job_state(pool, limited.id) == "QUEUED"
    assert (await workers(pool, "BUSY"))[0]["current_job_id"] == default.id


async def test_a_worker_requested_for_a_job_is_not_taken_by_a_later_one(
    api: ApiClient, pool: asyncpg.Pool
) -> None:
    first = (await api.submit(SubmitJob(command="x"))).job
    await assert_eventually(lambda: _count(workers(pool, "CREATING"), 1))
    urgent = (await api.submit(SubmitJob(command="y", priority=10))).job
    await assert_eventually(lambda: _count(workers(pool, "CREATING"), 2))
    for_first = next(w["id"] for w in await workers(pool, "CREATING")
                     if w["for_job_id"] == first.id)
    await make_ready(pool, for_first)
    await assert_eventually(lambda: _is(job_state(pool, first.id), "ASSIGNED"))
    assert await job_state(pool, urgent.id) == "QUEUED"


async def test_warm_pool_keeps_min_idle_workers_requested(
    core: list[HodeiService], pool: asyncpg.Pool
) -> None:
    await pool.execute("UPDATE provider_configs SET min_idle = 2 WHERE name = 'local'")
    await assert_eventually(lambda: _count(workers(pool, "CREATING"), 2))


async def _is(value: object, expected: str) -> bool:
    return await value == expected  # type: ignore[misc]


async def _count(rows: object, n: int) -> bool:
    return len(await rows) == n  # type: ignore[misc]


async def test_workers_idle_past_their_ttl_are_retired_keeping_the_warm_pool(
    core: list[HodeiService], pool: asyncpg.Pool
) -> None:
    await pool.execute("UPDATE provider_configs SET min_idle = 1, max_workers = 3, "
                       "settings = '{\"idle_ttl_s\": 0.5}' WHERE name = 'local'")
    ids = [uuid.uuid4() for _ in range(3)]
    for age_s, worker_id in zip((30, 20, 10), ids, strict=True):
        await pool.execute(
            "INSERT INTO workers (id, provider, state, idle_since) VALUES "
            "($1, 'local', 'READY', now() - make_interval(secs => $2))", worker_id, age_s)

    async def states() -> list[str]:
        rows = await pool.fetch("SELECT id, state FROM workers WHERE id = ANY($1)", ids)
        by_id = {r["id"]: r["state"] for r in rows}
        return [by_id[i] for i in ids]

    await assert_eventually(
        lambda: _is_list(states(), ["TERMINATING", "TERMINATING", "READY"]), within_s=5)
    assert (await event_types(pool, ids[0]))[-1] == "WorkerTerminating"
    assert await event_types(pool, ids[2]) == []


async def _is_list(value: object, expected: list[str]) -> bool:
    return await value == expected  # type: ignore[misc]
