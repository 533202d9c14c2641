"""The bootstrap-token exchange: a refused token ends the agent with exit code 3."""

from __future__ import annotations

import os

import pytest

from hodei_common.testing import assert_eventually
from tests.agent.harness import TOKEN, Platform

pytestmark = pytest.mark.nats


async def test_refused_token_exits_3_with_one_error_line(platform: Platform) -> None:
    platform.refusal = "the bootstrap token has expired"
    agent = await platform.start_agent()
    assert await agent.exit_code() == 3
    assert agent.stderr.strip().splitlines() == [
        "error: registration refused: the bootstrap token has expired"
    ]


async def test_registration_presents_the_token_and_the_worker_identity(
    platform: Platform,
) -> None:
    agent = await platform.start_agent()
    await assert_eventually(lambda: platform.registrations)
    request = platform.registrations[0]
    assert request.worker_id == platform.worker_id
    assert request.token == TOKEN
    assert request.pid == agent.proc.pid
    assert request.hostname == os.uname().nodename
    assert request.agent_version


async def test_registration_is_retried_until_the_provisioner_answers(
    platform: Platform,
) -> None:
    await platform.close_registration()
    agent = await platform.start_agent()
    await assert_eventually(lambda: "registration: no answer yet" in agent.stderr)
    await platform.open_registration()
    job = await platform.assign("echo late")
    assert (await platform.finished(job)).exit_code == 0
    assert await agent.exit_code() == 0


async def test_nobody_answering_ends_the_agent_with_one_error_line(platform: Platform) -> None:
    await platform.close_registration()
    agent = await platform.start_agent(HODEI_REGISTER_DEADLINE_S="0.5")
    assert await agent.exit_code() == 1
    errors = [line for line in agent.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: nobody answered hodei.worker.register within 0.5s"]
    assert "Traceback" not in agent.stderr


async def test_invalid_worker_id_is_one_config_error_line(platform: Platform) -> None:
    agent = await platform.start_agent(HODEI_WORKER_ID="not-a-uuid")
    assert await agent.exit_code() == 1
    assert agent.stderr.strip().splitlines()[-1].startswith("error: HODEI_WORKER_ID:")
    assert "Traceback" not in agent.stderr


async def test_unreachable_nats_is_one_error_line_and_exit_1(platform: Platform) -> None:
    agent = await platform.start_agent(HODEI_NATS_URL="nats://127.0.0.1:1",
                                       HODEI_NATS_CONNECT_ATTEMPTS="1")
    assert await agent.exit_code() == 1
    errors = [line for line in agent.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: cannot reach NATS at nats://127.0.0.1:1")
    assert "Traceback" not in agent.stderr
