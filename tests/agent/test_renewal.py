"""The agent's NATS user expires within its life: it is renewed and taken into use in time,
so jobs run across its expiry end with every report and log line."""

from __future__ import annotations

import pytest

from hodei_common.contracts.agent import Outcome
from hodei_common.contracts.workers import WorkerMode
from hodei_common.testing import assert_eventually
from tests.agent.harness import Platform

pytestmark = pytest.mark.nats

# Short enough that a job of a few seconds outlives several JWTs; long enough for a busy
# machine to renew and reconnect in time (the agent renews at half a life).
LIFETIME_S = 6.0
LINES = 80


async def test_an_agent_keeps_working_across_the_expiry_of_its_jwts(platform: Platform) -> None:
    platform.jwt_lifetime_s = LIFETIME_S
    await platform.open_renewals()
    platform.serve(WorkerMode.REUSABLE)
    agent = await platform.start_agent()
    # About two lifetimes: the connection is re-made while the job runs, before the JWT it
    # was made with expires.
    job = await platform.assign(
        f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.15; done", timeout_s=60)
    finished = await platform.finished(job, within_s=90)
    assert (finished.outcome, finished.exit_code) == (Outcome.SUCCEEDED, 0)
    assert platform.texts(job) == [f"line {i}" for i in range(1, LINES + 1)]
    assert finished.log_lines == LINES
    assert platform.renewals >= 2
    # Idle past more lifetimes, it still takes and runs a job.
    renewed = platform.renewals
    await assert_eventually(lambda: platform.renewals >= renewed + 2,
                            within_s=4 * LIFETIME_S)
    second = await platform.assign("echo still here")
    done = await platform.finished(second, within_s=30)
    assert done.outcome is Outcome.SUCCEEDED
    assert platform.texts(second) == ["still here"]
    assert "Authentication Expired" not in agent.stderr
    assert "reconnecting to NATS with its renewed user" in agent.stderr


async def test_a_renewal_whose_reply_is_lost_is_asked_again_before_the_jwt_expires(
    platform: Platform,
) -> None:
    platform.jwt_lifetime_s = LIFETIME_S
    platform.renewals_unanswered = 1
    await platform.open_renewals()
    platform.serve(WorkerMode.REUSABLE)
    agent = await platform.start_agent()
    # Past its first JWT's expiry, renewed on the second request: still connected, it runs
    # a job.
    await assert_eventually(lambda: platform.renewals >= 2, within_s=3 * LIFETIME_S)
    assert platform.renewals_asked >= 2
    job = await platform.assign("echo renewed in time")
    done = await platform.finished(job, within_s=30)
    assert done.outcome is Outcome.SUCCEEDED
    assert platform.texts(job) == ["renewed in time"]
    assert "Authentication Expired" not in agent.stderr
    assert "NATS user not renewed" in agent.stderr


async def test_a_refused_renewal_is_logged_as_an_error(platform: Platform) -> None:
    platform.jwt_lifetime_s = LIFETIME_S
    platform.renew_refusal = f"worker {platform.worker_id} is FAILED: its agent's NATS user " \
                             "is not renewed"
    await platform.open_renewals()
    platform.serve(WorkerMode.REUSABLE)
    agent = await platform.start_agent(HODEI_AGENT_PLATFORM_LOST_S="2")
    await assert_eventually(
        lambda: f"NATS user not renewed: {platform.renew_refusal}" in agent.stderr,
        within_s=2 * LIFETIME_S)
    # Its JWT expires: the server closes its connection, and it ends as an agent without
    # its platform.
    assert await agent.exit_code(within_s=4 * LIFETIME_S) != 0
    assert platform.renewals == 0
