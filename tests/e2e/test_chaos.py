"""Chaos: the services as separate processes with real agents, killed -9 and restarted, and
nats-server and PostgreSQL restarted, while jobs run. No job is lost, none completes twice,
no worker or agent is left over, and delivering every event again changes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS

from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.logs import LogBatch, LogEnd
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.errors import HodeiError
from hodei_common.logreader import read_log
from hodei_common.testing import assert_eventually
from hodei_common.testing.processes import SERVICE_MODULES, ProcessPlatform, start_process_platform
from tests.e2e.conftest import agent_processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
LIVE_WORKER = ("CREATING", "READY", "BUSY", "TERMINATING")
# Defaults everywhere, except that a worker whose creation a killed provisioner left half
# done is given up after 15 s rather than 60 (it keeps the suite to a few minutes).
CHAOS_ENV = {"HODEI_SUPERVISOR_REGISTER_TIMEOUT_S": "15", "HODEI_LOG_LEVEL": "INFO"}


@pytest.fixture(scope="module")
def chaos() -> Iterator[ProcessPlatform]:
    platform = start_process_platform(CHAOS_ENV)
    try:
        yield platform
    finally:
        # HODEI_TEST_KEEP=1 keeps the services' logs (and data) under the printed root.
        keep = bool(os.environ.get("HODEI_TEST_KEEP"))
        platform.stop(keep=keep)
        if keep:
            print(f"chaos platform kept at {platform.root}")
        for pid in agent_processes(platform.nats_url, templates=True):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def nc(chaos: ProcessPlatform) -> AsyncIterator[NATS]:
    client = await chaos.connect(max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield client
    await client.close()


async def _query(chaos: ProcessPlatform, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One query on a fresh connection (the server may have been restarted since)."""
    conn = await asyncpg.connect(chaos.database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def submit(nc: NATS, command: str, job_id: UUID | None = None) -> UUID:
    """Queue a job, trying again while the API is down (its id makes a retry idempotent)."""
    job_id = job_id or uuid4()
    deadline = time.monotonic() + 60
    while True:
        try:
            await ApiClient(nc, timeout_s=2.0).submit(SubmitJob(id=job_id, command=command))
            return job_id
        except (HodeiError, nats.errors.Error, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def all_ended(chaos: ProcessPlatform, ids: list[UUID], within_s: float) -> None:
    """Wait until every job is terminal, restarting services that died (a restart policy)."""
    async def ended() -> bool:
        chaos.services.revive()
        try:
            rows = await _query(chaos, "SELECT count(*) AS n FROM jobs WHERE id = ANY($1) "
                                       "AND state = ANY($2)", ids, list(TERMINAL))
        except (OSError, asyncpg.PostgresError):
            return False
        return bool(rows[0]["n"] == len(ids))

    await assert_eventually(ended, within_s=within_s, message="jobs still unfinished")


async def assert_each_succeeded_once(chaos: ProcessPlatform, ids: list[UUID],
                                     marks: Path | None = None) -> None:
    """Every job SUCCEEDED with one JobSucceeded; its side effect (a line in its own file
    under ``marks``) happened once; no worker is left alive, no agent process either."""
    rows = await _query(chaos, "SELECT id, state FROM jobs WHERE id = ANY($1)", ids)
    assert {r["id"]: r["state"] for r in rows} == dict.fromkeys(ids, "SUCCEEDED")
    counts = await _query(
        chaos, "SELECT aggregate_id, count(*) AS n FROM domain_events WHERE event_type = "
               "'JobSucceeded' AND aggregate_id = ANY($1) GROUP BY 1", ids)
    assert {r["aggregate_id"]: r["n"] for r in counts} == dict.fromkeys(ids, 1)
    if marks is not None:
        for job_id in ids:
            assert (marks / str(job_id)).read_text() == "ran\n", f"job {job_id}"

    async def no_orphans() -> bool:
        chaos.services.revive()
        live = await _query(chaos, "SELECT count(*) AS n FROM workers WHERE state = ANY($1)",
                            list(LIVE_WORKER))
        return live[0]["n"] == 0 and not agent_processes(chaos.nats_url)

    await assert_eventually(no_orphans, within_s=60, message="workers or agents left over")


def marked(marks: Path, job_id_file: str, seconds: float) -> str:
    """A command that runs a while, then leaves its mark: one line in its own file."""
    return f"sleep {seconds}; echo ran >> {marks / job_id_file}; echo done"


async def _submit_marked(nc: NATS, marks: Path, n: int, seconds: float) -> list[UUID]:
    ids = [uuid4() for _ in range(n)]
    for job_id in ids:
        await submit(nc, marked(marks, str(job_id), seconds), job_id)
    return ids


async def test_an_agent_killed_mid_job_is_requeued_and_succeeds_on_attempt_two(
    chaos: ProcessPlatform, nc: NATS
) -> None:
    job_id = await submit(nc, "echo begin; sleep 2; echo done")

    async def running_pid() -> int:
        rows = await _query(chaos, "SELECT w.provider_resource_id FROM jobs j JOIN workers w "
                                   "ON w.id = j.worker_id WHERE j.id = $1 AND j.state = "
                                   "'RUNNING'", job_id)
        return int(rows[0]["provider_resource_id"]) if rows and rows[0][0] else 0

    os.kill(await assert_eventually(running_pid, within_s=30), signal.SIGKILL)
    await all_ended(chaos, [job_id], within_s=60)
    job = (await _query(chaos, "SELECT state, attempt FROM jobs WHERE id = $1", job_id))[0]
    assert (job["state"], job["attempt"]) == ("SUCCEEDED", 2)
    await assert_each_succeeded_once(chaos, [job_id])
    types = [r["event_type"] for r in await _query(
        chaos, "SELECT event_type FROM domain_events WHERE aggregate_id = $1 ORDER BY seq",
        job_id)]
    assert types.count("JobRequeued") == 1
    js = nc.jetstream()
    log = [m async for m in read_log(js, DEFAULT_NAMESPACE, job_id, follow=True,
                                     idle_timeout_s=10)]
    texts = [(m.attempt, line.text) for m in log if isinstance(m, LogBatch) for line in m.lines]
    assert texts[-2:] == [(2, "begin"), (2, "done")]
    assert texts[0] == (1, "begin")
    assert isinstance(log[-1], LogEnd)
    assert (log[-1].state, log[-1].attempt) == ("SUCCEEDED", 2)


async def test_each_service_killed_9_in_turn_while_50_jobs_run_loses_none_and_runs_none_twice(
    chaos: ProcessPlatform, nc: NATS, tmp_path: Path
) -> None:
    ids = await _submit_marked(nc, tmp_path, 50, 0.5)
    for name in SERVICE_MODULES:
        chaos.services.kill(name)
        await asyncio.sleep(0.5)
        chaos.services.start(name)
        await asyncio.sleep(1.0)
    await all_ended(chaos, ids, within_s=150)
    await assert_each_succeeded_once(chaos, ids, tmp_path)


@pytest.mark.parametrize("server", ["nats-server", "postgres"])
async def test_a_server_killed_and_restarted_mid_run_loses_nothing(
    chaos: ProcessPlatform, nc: NATS, tmp_path: Path, server: str
) -> None:
    """Every service reconnects (NATS) or retries (PostgreSQL) on its own."""
    ids = await _submit_marked(nc, tmp_path, 20, 1.0)
    await asyncio.sleep(1.0)
    restart = chaos.restart_nats if server == "nats-server" else chaos.restart_postgres
    await asyncio.to_thread(restart)
    await all_ended(chaos, ids, within_s=120)
    await assert_each_succeeded_once(chaos, ids, tmp_path)


DURABLES = [
    (subjects.JOB_EVENTS_STREAM, subjects.SCHEDULER_DISPATCH_CONSUMER),
    (subjects.WORKER_EVENTS_STREAM, subjects.SCHEDULER_DISPATCH_CONSUMER),
    (subjects.WORKER_STATUS_STREAM, subjects.SCHEDULER_STATUS_CONSUMER),
    (subjects.JOB_EVENTS_STREAM, subjects.SCHEDULER_CANCEL_CONSUMER),
    (subjects.WORKER_EVENTS_STREAM, subjects.PROVISIONER_REQUESTS_CONSUMER),
    (subjects.WORKER_EVENTS_STREAM, subjects.PROVISIONER_RELEASE_CONSUMER),
    (subjects.JOB_EVENTS_STREAM, subjects.LOGS_ARCHIVE_CONSUMER),
]


async def _snapshot(chaos: ProcessPlatform) -> dict[str, Any]:
    return {
        "jobs": [dict(r) for r in await _query(chaos, "SELECT * FROM jobs ORDER BY id")],
        "workers": [dict(r) for r in await _query(chaos, "SELECT * FROM workers ORDER BY id")],
        # Every event written, whether the relay has published (and deleted) its outbox row
        # yet or not.
        "events": (await _query(chaos, "SELECT count(*) AS n FROM domain_events"))[0]["n"],
    }


async def _all_handled(nc: NATS) -> bool:
    js = nc.jetstream()
    for stream, durable in DURABLES:
        info = await js.consumer_info(stream, durable)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def test_every_event_delivered_a_second_time_changes_nothing(
    chaos: ProcessPlatform, nc: NATS
) -> None:
    # Runs after the others: their jobs and workers are the state to keep.
    chaos.services.revive()
    await assert_eventually(lambda: _all_handled(nc), within_s=60)
    # An agent still winding down would beat (last_heartbeat) while the events replay.
    await assert_eventually(lambda: not agent_processes(chaos.nats_url), within_s=60)
    before = await _snapshot(chaos)
    assert before["jobs"], "the earlier chaos tests left no jobs to replay"
    js = nc.jetstream()
    replayed = 0
    for stream in (subjects.JOB_EVENTS_STREAM, subjects.WORKER_EVENTS_STREAM,
                   subjects.WORKER_STATUS_STREAM):
        state = (await js.stream_info(stream)).state
        for seq in range(state.first_seq, state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            headers = {k: v for k, v in (msg.headers or {}).items()
                       if k != subjects.HEADER_MSG_ID}
            headers[subjects.HEADER_MSG_ID] = f"replay-{stream}-{seq}"
            await js.publish(msg.subject, msg.data or b"", headers=headers)
            replayed += 1
    assert replayed > 100
    await assert_eventually(lambda: _all_handled(nc), within_s=60)
    await asyncio.sleep(1.0)  # a pass or a sweep that began meanwhile
    assert await _snapshot(chaos) == before
