"""Recovery: silent workers are lost and their jobs requeued (or failed, cancelled, timed
out); stuck assignments and registrations are undone; a worker back from the dead is told to
stop and what it says is refused. The test plays the workers (a row, beats, reports)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Control, ControlAction, Heartbeat, Outcome, StatusKind
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.logs import LogEnd, LogRecord
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.testing import assert_eventually
from tests.scheduler.conftest import make_ready, report
from tests.scheduler.test_scheduler import _is, assigned_job, event_types, job_state, workers
from tests.supervisor.conftest import HEARTBEAT_S

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def beat(nc: NATS, worker_id: UUID, job_id: UUID | None = None,
               attempt: int | None = None) -> None:
    body = Heartbeat(worker_id=worker_id, at=datetime.now(UTC), job_id=job_id, attempt=attempt)
    await nc.publish(subjects.worker_heartbeat(worker_id), msgspec.json.encode(body))


async def beating(nc: NATS, worker_id: UUID, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await beat(nc, worker_id)
        await asyncio.sleep(HEARTBEAT_S)


async def end_of_log(js: JetStreamContext, job_id: UUID) -> LogEnd | None:
    try:
        last = await js.get_last_msg(subjects.LOGS_STREAM,
                                     subjects.platform_logs(DEFAULT_NAMESPACE, job_id))
    except Exception:
        return None
    message = msgspec.json.decode(last.data or b"", type=LogRecord)
    return message if isinstance(message, LogEnd) else None


async def job_row(pool: asyncpg.Pool, job_id: UUID) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    assert row is not None
    return row


async def test_job_requeued_with_backoff_when_its_worker_misses_heartbeats(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job, worker_id = await assigned_job(api, pool, "true")
    await report(js, worker_id, job.id, 1, StatusKind.STARTED)
    # The worker never beats: it is lost once the supervisor has listened long enough.
    await assert_eventually(lambda: _is(job_state(pool, job.id), "QUEUED"), within_s=10)
    row = await job_row(pool, job.id)
    assert (row["attempt"], row["worker_id"], row["started_at"]) == (2, None, None)
    assert row["error"].startswith("worker lost: no heartbeat for ")
    assert row["not_before"] is not None
    lost = await pool.fetchrow("SELECT state, error FROM workers WHERE id = $1", worker_id)
    assert lost["state"] == "FAILED"
    assert await event_types(pool, worker_id) == [
        "ProvisionRequested", "WorkerHeartbeatMissed", "WorkerFailed"]
    assert (await event_types(pool, job.id))[-1] == "JobRequeued"
    requeued = await pool.fetchval(
        "SELECT payload FROM domain_events WHERE aggregate_id = $1 AND event_type = "
        "'JobRequeued'", job.id)
    assert (requeued["attempt"], requeued["previous_worker_id"]) == (2, str(worker_id))
    assert requeued["backoff_s"] == 0.5

    # A new worker is requested for it; the job goes to it as attempt 2 and can succeed.
    fresh = await assert_eventually(
        lambda: pool.fetchval("SELECT id FROM workers WHERE state = 'CREATING' AND "
                              "for_job_id = $1", job.id))
    await make_ready(pool, fresh)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "ASSIGNED"))
    assigned = await job_row(pool, job.id)
    assert assigned["assigned_at"] >= row["not_before"]
    await report(js, fresh, job.id, 2, StatusKind.FINISHED, Outcome.SUCCEEDED, exit_code=0)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "SUCCEEDED"))
    assert (await event_types(pool, job.id)).count("JobSucceeded") == 1


async def test_a_worker_that_keeps_beating_is_not_lost(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext, nc: NATS
) -> None:
    job, worker_id = await assigned_job(api, pool, "sleep 3")
    stop = asyncio.Event()
    beats = asyncio.create_task(beating(nc, worker_id, stop))
    try:
        await report(js, worker_id, job.id, 1, StatusKind.STARTED)
        await assert_eventually(lambda: _is(job_state(pool, job.id), "RUNNING"))
        await asyncio.sleep(8 * HEARTBEAT_S)  # several silence limits
        assert await job_state(pool, job.id) == "RUNNING"
        assert await pool.fetchval("SELECT state FROM workers WHERE id = $1", worker_id) == "BUSY"
    finally:
        stop.set()
        await beats


async def test_a_job_whose_attempts_are_used_up_fails_worker_lost_with_its_log_ended(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job = (await api.submit(SubmitJob(command="true", max_attempts=1))).job
    worker_id = (await assert_eventually(lambda: workers(pool, "CREATING")))[0]["id"]
    await make_ready(pool, worker_id)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "ASSIGNED"))
    await report(js, worker_id, job.id, 1, StatusKind.STARTED)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "FAILED"), within_s=10)
    row = await job_row(pool, job.id)
    assert row["attempt"] == 1
    assert row["error"].startswith("worker lost: no heartbeat for ")
    assert (await event_types(pool, job.id))[-1] == "JobFailed"
    end = await assert_eventually(lambda: end_of_log(js, job.id))
    assert (end.state, end.error) == ("FAILED", row["error"])


async def test_a_cancel_asked_for_a_job_on_a_lost_worker_ends_it_cancelled(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job, worker_id = await assigned_job(api, pool, "sleep 100")
    await report(js, worker_id, job.id, 1, StatusKind.STARTED)
    await api.cancel(job.id)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "CANCELLED"), within_s=10)
    assert (await job_row(pool, job.id))["attempt"] == 1
    end = await assert_eventually(lambda: end_of_log(js, job.id))
    assert end.state == "CANCELLED"


async def test_an_assignment_never_taken_is_requeued_and_its_worker_given_up(
    api: ApiClient, pool: asyncpg.Pool, nc: NATS
) -> None:
    job, worker_id = await assigned_job(api, pool, "true")
    stop = asyncio.Event()
    beats = asyncio.create_task(beating(nc, worker_id, stop))  # alive, but never reports
    try:
        await assert_eventually(lambda: _is(job_state(pool, job.id), "QUEUED"), within_s=10)
    finally:
        stop.set()
        await beats
    row = await job_row(pool, job.id)
    assert row["attempt"] == 2
    assert row["error"] == "worker lost: did not take its assignment within 1s"
    assert await pool.fetchval("SELECT state FROM workers WHERE id = $1", worker_id) == "FAILED"


async def test_a_job_running_past_its_timeout_with_no_result_is_timed_out(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext, nc: NATS
) -> None:
    job = (await api.submit(SubmitJob(command="sleep 100", timeout_s=1))).job
    worker_id = (await assert_eventually(lambda: workers(pool, "CREATING")))[0]["id"]
    await make_ready(pool, worker_id)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "ASSIGNED"))
    stop = asyncio.Event()
    beats = asyncio.create_task(beating(nc, worker_id, stop))  # a hung agent still beats
    try:
        await report(js, worker_id, job.id, 1, StatusKind.STARTED)
        await assert_eventually(lambda: _is(job_state(pool, job.id), "TIMED_OUT"), within_s=10)
    finally:
        stop.set()
        await beats
    assert await pool.fetchval("SELECT state FROM workers WHERE id = $1", worker_id) == "FAILED"
    assert (await event_types(pool, job.id))[-1] == "JobTimedOut"
    end = await assert_eventually(lambda: end_of_log(js, job.id))
    assert end.state == "TIMED_OUT"


async def test_a_worker_that_never_registers_is_given_up_and_its_job_gets_another(
    api: ApiClient, pool: asyncpg.Pool
) -> None:
    job = (await api.submit(SubmitJob(command="true"))).job
    first = (await assert_eventually(lambda: workers(pool, "CREATING")))[0]["id"]
    await assert_eventually(
        lambda: pool.fetchval("SELECT state = 'FAILED' FROM workers WHERE id = $1", first),
        within_s=10)
    assert await pool.fetchval("SELECT error FROM workers WHERE id = $1", first) == (
        "did not register within 1.5s")
    second = await assert_eventually(
        lambda: pool.fetchval("SELECT id FROM workers WHERE state = 'CREATING' AND "
                              "for_job_id = $1", job.id))
    assert second != first
    assert await job_state(pool, job.id) == "QUEUED"
    assert (await job_row(pool, job.id))["attempt"] == 1  # it never ran: no attempt used


async def test_a_worker_back_from_the_dead_is_told_to_stop_and_its_reports_refused(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext, nc: NATS
) -> None:
    job, worker_id = await assigned_job(api, pool, "true")
    await report(js, worker_id, job.id, 1, StatusKind.STARTED)
    await assert_eventually(lambda: _is(job_state(pool, job.id), "QUEUED"), within_s=10)

    orders: asyncio.Queue[Control] = asyncio.Queue()

    async def on_order(msg: object) -> None:
        await orders.put(msgspec.json.decode(msg.data, type=Control))  # type: ignore[attr-defined]

    await nc.subscribe(subjects.worker_control(worker_id), cb=on_order)
    # It beats again, twice: told to stop each time, recorded once.
    for _ in range(2):
        await beat(nc, worker_id, job.id, 1)
        order = await asyncio.wait_for(orders.get(), 5)
        assert order.action is ControlAction.STOP
    # Its result for the old attempt is refused (twice: redelivered), recorded once.
    for n in range(2):
        await js.publish(subjects.worker_status(worker_id), msgspec.json.encode(
            _finished(worker_id, job.id)), headers={subjects.HEADER_MSG_ID: f"stale-{n}"})
    order = await asyncio.wait_for(orders.get(), 5)
    assert order.action is ControlAction.STOP

    async def recorded() -> bool:
        types = await event_types(pool, job.id)
        return types.count("StaleReportRefused") == 1

    await assert_eventually(recorded)
    await asyncio.sleep(0.5)  # the second copy was applied by now (one consumer, in order)
    assert (await event_types(pool, job.id)).count("StaleReportRefused") == 1
    row = await job_row(pool, job.id)
    assert (row["state"], row["attempt"]) == ("QUEUED", 2)
    assert "JobSucceeded" not in await event_types(pool, job.id)
    assert (await event_types(pool, worker_id)).count("WorkerStopOrdered") == 1


def _finished(worker_id: UUID, job_id: UUID) -> object:
    from hodei_common.contracts.agent import StatusReport

    return StatusReport(worker_id=worker_id, job_id=job_id, attempt=1,
                        kind=StatusKind.FINISHED, at=datetime.now(UTC),
                        outcome=Outcome.SUCCEEDED, exit_code=0)


async def test_a_requeued_job_waits_for_its_backoff(
    api: ApiClient, pool: asyncpg.Pool, nc: NATS
) -> None:
    job = (await api.submit(SubmitJob(command="true"))).job
    await pool.execute("UPDATE jobs SET not_before = now() + interval '1 hour' WHERE id = $1",
                       job.id)
    worker_id = (await assert_eventually(lambda: workers(pool, "CREATING")))[0]["id"]
    await make_ready(pool, worker_id)
    stop = asyncio.Event()
    beats = asyncio.create_task(beating(nc, worker_id, stop))
    try:
        await asyncio.sleep(1.0)  # several dispatch passes
        assert await job_state(pool, job.id) == "QUEUED"
        await pool.execute("UPDATE jobs SET not_before = now() WHERE id = $1", job.id)
        await assert_eventually(lambda: _is(job_state(pool, job.id), "ASSIGNED"))
    finally:
        stop.set()
        await beats
    assert uuid.UUID(str(await pool.fetchval("SELECT worker_id FROM jobs WHERE id = $1",
                                             job.id))) == worker_id


async def test_a_cancel_order_is_said_again_until_the_job_ends(
    api: ApiClient, pool: asyncpg.Pool, js: JetStreamContext, nc: NATS
) -> None:
    job, worker_id = await assigned_job(api, pool, "sleep 100")
    orders: asyncio.Queue[Control] = asyncio.Queue()

    async def on_order(msg: object) -> None:
        await orders.put(msgspec.json.decode(msg.data, type=Control))  # type: ignore[attr-defined]

    await nc.subscribe(subjects.worker_control(worker_id), cb=on_order)
    stop = asyncio.Event()
    beats = asyncio.create_task(beating(nc, worker_id, stop))
    try:
        await report(js, worker_id, job.id, 1, StatusKind.STARTED)
        await api.cancel(job.id)
        for _ in range(3):  # the scheduler's order, then the supervisor's, again and again
            order = await asyncio.wait_for(orders.get(), 5)
            assert (order.action, order.job_id, order.attempt) == (
                ControlAction.CANCEL, job.id, 1)
    finally:
        stop.set()
        await beats
