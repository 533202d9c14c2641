"""An agent without its platform: NATS down past its limit, a short outage, a stop it cannot
report (the agent of a `hodei dev up` killed outright, then sent SIGTERM)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from hodei_common.contracts.agent import Outcome, StatusKind
from hodei_common.contracts.workers import WorkerMode
from hodei_common.embedded import NatsServer
from hodei_common.testing import assert_eventually
from hodei_common.testing.processes import running
from tests.agent.harness import AgentProcess, Platform

pytestmark = pytest.mark.nats


async def start_job(platform: Platform, agent: AgentProcess, pid_file: Path) -> int:
    """A job that sleeps for a minute, once it runs: the pid of its process."""
    job = await platform.assign(f"echo $$ > {pid_file}; exec sleep 60")
    await platform.reached(job, StatusKind.STARTED)
    await assert_eventually(lambda: pid_file.read_text().strip() if pid_file.exists() else None)
    return int(pid_file.read_text())


def last_line(agent: AgentProcess) -> str:
    assert "Traceback" not in agent.stderr
    return agent.stderr.strip().splitlines()[-1]


async def restart(server: NatsServer) -> None:
    await asyncio.to_thread(server.start)


async def test_an_agent_whose_nats_stays_down_past_its_limit_kills_its_job_and_exits_1(
    platform: Platform, nats_server: NatsServer, tmp_path: Path
) -> None:
    agent = await platform.start_agent(HODEI_AGENT_PLATFORM_LOST_S="2", HODEI_DRAIN_GRACE_S="1")
    pid = await start_job(platform, agent, tmp_path / "job.pid")
    nats_server.kill()
    try:
        assert await agent.exit_code(within_s=30) == 1
        assert last_line(agent) == ("error: lost its platform: NATS unreachable for 2s; its "
                                    "job's end could not be reported")
        assert not running(pid)
    finally:
        await restart(nats_server)  # for the test's own connection to close


async def test_an_idle_agent_whose_nats_stays_down_past_its_limit_exits_1(
    platform: Platform, nats_server: NatsServer
) -> None:
    platform.serve(WorkerMode.REUSABLE, heartbeat_interval_s=0.05)
    agent = await platform.start_agent(HODEI_AGENT_PLATFORM_LOST_S="1")
    await assert_eventually(lambda: platform.heartbeats)
    nats_server.kill()
    try:
        assert await agent.exit_code(within_s=30) == 1
        assert last_line(agent) == "error: lost its platform: NATS unreachable for 1s"
    finally:
        await restart(nats_server)


async def test_an_agent_rides_out_a_nats_outage_shorter_than_its_limit(
    platform: Platform, nats_server: NatsServer
) -> None:
    agent = await platform.start_agent(HODEI_AGENT_PLATFORM_LOST_S="8")
    job = await platform.assign("echo before; sleep 5; echo after")
    await platform.reached(job, StatusKind.STARTED)
    nats_server.kill()
    await asyncio.sleep(2.0)
    await restart(nats_server)
    finished = await platform.finished(job, within_s=30)
    assert finished.outcome is Outcome.SUCCEEDED
    assert platform.texts(job) == ["before", "after"]
    assert await agent.exit_code() == 0
    assert "Traceback" not in agent.stderr


async def test_sigterm_while_nats_is_down_kills_the_job_and_exits_within_its_bound(
    platform: Platform, nats_server: NatsServer, tmp_path: Path
) -> None:
    # Before its platform-lost limit (60 s by default): only the stop's own bound applies,
    # its job's kill grace (2 s) and HODEI_DRAIN_GRACE_S for its last reports.
    agent = await platform.start_agent(HODEI_DRAIN_GRACE_S="1")
    pid = await start_job(platform, agent, tmp_path / "job.pid")
    nats_server.kill()
    try:
        await asyncio.sleep(0.5)
        agent.signal(signal.SIGTERM)
        assert await agent.exit_code(within_s=15) == 1
        assert last_line(agent) == (
            "error: stopped (received SIGTERM), but its job's end could not be reported "
            "within 3s: is NATS reachable?")
        assert not running(pid)
    finally:
        await restart(nats_server)
