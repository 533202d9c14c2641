"""A job's env values are secrets: `hodei` shows them only on `job get --show-env`."""

from __future__ import annotations

import json

import pytest
from nats.js import JetStreamContext

from hodei_common.contracts import subjects
from hodei_common.runner import HodeiService
from hodei_common.testing import assert_eventually
from tests.cli.conftest import run_cli

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

SECRET = "s3cr3t-value"


def shown_env(details: str) -> str:
    """The ``env:`` line of `job get`'s details, without its key."""
    return next(line.split(":", 1)[1].strip() for line in details.splitlines()
                if line.startswith("env:"))


async def job_events_stream(js: JetStreamContext) -> list[bytes]:
    """Every message of JOB_EVENTS, headers and body, in stream order."""
    info = await js.stream_info(subjects.JOB_EVENTS_STREAM)
    messages = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.JOB_EVENTS_STREAM, seq)
        messages.append(repr(msg.headers).encode() + msg.data)
    return messages


async def test_env_values_reach_no_output_but_get_with_show_env(
    platform: list[HodeiService], cli_env: dict[str, str], js: JetStreamContext
) -> None:
    queued = await run_cli(cli_env, "job", "queue", "--command", "echo $API_TOKEN",
                           "--env", f"API_TOKEN={SECRET},MODE=x", "-o", "json")
    assert queued.code == 0, queued.stderr
    job_id = json.loads(queued.stdout)["id"]
    other = await run_cli(cli_env, "job", "queue", "--command", "true", "--env", f"K={SECRET}")

    outputs = {
        "queue -o json": queued,
        "list -o json": await run_cli(cli_env, "job", "list", "-o", "json"),
        "list": await run_cli(cli_env, "job", "list"),
        "get -o json": await run_cli(cli_env, "job", "get", job_id, "-o", "json"),
        "get": await run_cli(cli_env, "job", "get", job_id),
        "explain -o json": await run_cli(cli_env, "job", "explain", job_id, "-o", "json"),
        "explain": await run_cli(cli_env, "job", "explain", job_id),
        "events -o json": await run_cli(cli_env, "job", "events", job_id, "-o", "json"),
        "events": await run_cli(cli_env, "job", "events", job_id),
        "cancel -o json": await run_cli(cli_env, "job", "cancel", other.stdout.strip(),
                                        "-o", "json"),
    }

    for name, result in outputs.items():
        assert result.code == 0, (name, result.stderr)
        assert SECRET not in result.stdout + result.stderr, name
    got = json.loads(outputs["get -o json"].stdout)
    assert (got["env"], got["env_keys"]) == ({}, ["API_TOKEN", "MODE"])
    assert shown_env(outputs["get"].stdout) == "API_TOKEN=<hidden>, MODE=<hidden>"
    assert [j["env_keys"] for j in json.loads(outputs["list -o json"].stdout)] == [
        ["K"], ["API_TOKEN", "MODE"]]
    created = [e for e in json.loads(outputs["events -o json"].stdout)
               if e["event_type"] == "JobCreated"]
    assert created[0]["payload"]["env_keys"] == ["API_TOKEN", "MODE"]

    async def published() -> list[bytes]:
        # The relay publishes both jobs' JobCreated and the cancel's JobCancelled.
        messages = await job_events_stream(js)
        assert len(messages) == 3
        return messages

    for message in await assert_eventually(published):
        assert SECRET.encode() not in message


async def test_get_with_show_env_shows_the_values(
    platform: list[HodeiService], cli_env: dict[str, str]
) -> None:
    queued = await run_cli(cli_env, "job", "queue", "--command", "true",
                           "--env", f"API_TOKEN={SECRET},MODE=x")
    job_id = queued.stdout.strip()

    as_json = await run_cli(cli_env, "job", "get", job_id, "--show-env", "-o", "json")
    as_text = await run_cli(cli_env, "job", "get", "--id", job_id, "--show-env")

    assert (as_json.code, as_text.code) == (0, 0), as_json.stderr + as_text.stderr
    assert json.loads(as_json.stdout)["env"] == {"API_TOKEN": SECRET, "MODE": "x"}
    assert shown_env(as_text.stdout) == f"API_TOKEN={SECRET}, MODE=x"
