"""The agent's life: assignments it takes or fences off, modes, heartbeats, stop orders."""

from __future__ import annotations

import signal
from pathlib import Path
from uuid import uuid4

import pytest

from hodei_common.contracts.agent import ControlAction, Outcome, StatusKind
from hodei_common.contracts.workers import WorkerMode
from hodei_common.testing import assert_eventually
from hodei_common.testing.processes import running
from tests.agent.harness import Platform

pytestmark = pytest.mark.nats


async def test_assignment_published_before_the_agent_started_is_run(platform: Platform) -> None:
    job = await platform.assign("echo early")
    agent = await platform.start_agent()
    assert (await platform.finished(job)).outcome is Outcome.SUCCEEDED
    assert platform.texts(job) == ["early"]
    assert await agent.exit_code() == 0


async def test_ephemeral_agent_exits_0_after_one_job(platform: Platform) -> None:
    first = await platform.assign("echo first")
    second = await platform.assign("echo second")
    agent = await platform.start_agent()
    assert await agent.exit_code() == 0
    assert (await platform.finished(first)).outcome is Outcome.SUCCEEDED
    assert platform.texts(first) == ["first"]
    assert platform.reports(second) == []


async def test_reusable_agent_runs_jobs_one_at_a_time_until_max_jobs(
    platform: Platform,
) -> None:
    platform.serve(WorkerMode.REUSABLE, max_jobs=2)
    jobs = [await platform.assign(f"echo job{i}") for i in range(3)]
    agent = await platform.start_agent()
    assert await agent.exit_code() == 0
    await platform.finished(jobs[1])
    assert [(s.job_id, s.kind) for s in platform.statuses] == [
        (job.job_id, kind) for job in jobs[:2]
        for kind in (StatusKind.FINISHED,)]
    # The first FINISHED says the agent stays for more; the last one, why it leaves.
    assert [s.leaving for s in platform.statuses] == [None, "ran its 2 jobs (max_jobs)"]
    assert platform.texts(jobs[0]) == ["job0"]
    assert platform.texts(jobs[1]) == ["job1"]
    assert platform.reports(jobs[2]) == []


async def test_duplicate_and_foreign_assignments_are_ignored(platform: Platform) -> None:
    platform.serve(WorkerMode.REUSABLE, max_jobs=2)
    job = await platform.assign("echo once")
    await platform.assign("echo once", job_id=job.job_id)  # the same (job, attempt) again
    foreign = await platform.assign("echo not-mine", worker_id=uuid4())
    retry = await platform.assign("echo retried", job_id=job.job_id, attempt=2)
    agent = await platform.start_agent()
    assert await agent.exit_code() == 0
    await platform.finished(retry)
    assert [s.kind for s in platform.reports(job)] == [StatusKind.FINISHED]
    assert platform.texts(job) == ["once"]
    assert platform.reports(foreign) == []
    assert platform.texts(retry) == ["retried"]
    assert "already handled" in agent.stderr
    assert "not to us" in agent.stderr


async def test_reusable_agent_exits_0_after_idle_ttl_without_work(platform: Platform) -> None:
    platform.serve(WorkerMode.REUSABLE, idle_ttl_s=0.3)
    agent = await platform.start_agent()
    assert await agent.exit_code() == 0
    assert "no work for 0.3s" in agent.stderr


async def test_heartbeats_name_the_running_job_and_a_stop_order_ends_the_agent(
    platform: Platform,
) -> None:
    platform.serve(WorkerMode.REUSABLE, heartbeat_interval_s=0.05)
    agent = await platform.start_agent()
    await assert_eventually(lambda: platform.heartbeats)
    assert platform.heartbeats[0].worker_id == platform.worker_id
    assert platform.heartbeats[0].job_id is None
    job = await platform.assign("sleep 60")
    await assert_eventually(
        lambda: [b for b in platform.heartbeats if (b.job_id, b.attempt) == (job.job_id, 1)])
    await platform.control(ControlAction.STOP)
    finished = await platform.finished(job)
    assert finished.outcome is Outcome.CANCELLED
    assert await agent.exit_code() == 0


async def test_sigterm_cancels_the_running_job_and_exits_0(platform: Platform) -> None:
    agent = await platform.start_agent()
    job = await platform.assign("sleep 60")
    await platform.reached(job, StatusKind.STARTED)
    agent.signal(signal.SIGTERM)
    assert await agent.exit_code() == 0
    finished = await platform.finished(job)
    assert finished.outcome is Outcome.CANCELLED
    assert finished.error == "cancelled: received SIGTERM"


async def test_sigterm_told_to_abandon_kills_the_job_unreported_and_exits_143(
    platform: Platform, tmp_path: Path,
) -> None:
    # A pod's agent: its node takes the pod away, and the platform runs the job elsewhere.
    agent = await platform.start_agent(HODEI_AGENT_ON_SIGTERM="abandon")
    pid_file = tmp_path / "job.pid"
    job = await platform.assign(f"echo $$ > {pid_file}; exec sleep 60")
    await platform.reached(job, StatusKind.STARTED)
    await assert_eventually(lambda: pid_file.read_text().strip() if pid_file.exists() else None)
    agent.signal(signal.SIGTERM)
    assert await agent.exit_code() == 143
    assert not running(int(pid_file.read_text()))
    assert [s.kind for s in platform.reports(job)] == [StatusKind.STARTED]


async def test_cancel_ordered_before_the_assignment_arrives_cancels_it_unstarted(
    platform: Platform,
) -> None:
    platform.serve(WorkerMode.REUSABLE, max_jobs=1, heartbeat_interval_s=0.05)
    agent = await platform.start_agent()
    await assert_eventually(lambda: platform.heartbeats)  # it listens for orders now
    job_id = uuid4()
    await platform.control(ControlAction.CANCEL, job_id=job_id)
    await platform.nc.flush()
    job = await platform.assign("echo never", job_id=job_id)
    finished = await platform.finished(job)
    assert finished.outcome is Outcome.CANCELLED
    assert [s.kind for s in platform.reports(job)] == [StatusKind.FINISHED]
    assert await agent.exit_code() == 0


async def test_reports_and_logs_continue_the_assignments_trace(platform: Platform) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    job = await platform.assign(
        "echo traced", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    await platform.start_agent()
    await platform.finished(job)
    # one log batch, finished (which also says when it started)
    await assert_eventually(lambda: len(platform.headers) == 2)
    for headers in platform.headers:
        assert headers["traceparent"].split("-")[1] == trace_id
