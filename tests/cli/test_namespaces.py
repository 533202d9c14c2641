"""The CLI acts in one namespace (HODEI_NAMESPACE): another namespace's jobs are not found."""

from __future__ import annotations

import json
import uuid

import pytest

from hodei_common.runner import HodeiService
from tests.cli.conftest import run_cli

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


def in_namespace(env: dict[str, str], namespace: str) -> dict[str, str]:
    return {**env, "HODEI_NAMESPACE": namespace}


@pytest.mark.parametrize("command", ["get", "cancel", "events", "explain", "logs"])
async def test_a_job_of_the_default_namespace_is_not_found_from_another(
    platform: list[HodeiService], cli_env: dict[str, str], command: str
) -> None:
    job_id = (await run_cli(cli_env, "job", "queue", "--command", "sleep 100")).stdout.strip()
    unknown = str(uuid.UUID(int=7))

    other = await run_cli(in_namespace(cli_env, "other"), "job", command, job_id)
    missing = await run_cli(in_namespace(cli_env, "other"), "job", command, unknown)

    assert other.code == missing.code == 1
    assert (other.stdout, other.stderr) == ("", f"error: job {job_id} not found\n")
    assert missing.stderr.replace(unknown, job_id) == other.stderr
    mine = json.loads((await run_cli(cli_env, "job", "get", job_id, "-o", "json")).stdout)
    assert (mine["namespace"], mine["state"]) == ("default", "QUEUED")


async def test_job_get_and_list_show_the_namespace_and_list_only_its_jobs(
    platform: list[HodeiService], cli_env: dict[str, str]
) -> None:
    team = in_namespace(cli_env, "team-a")
    job_id = (await run_cli(team, "job", "queue", "--command", "echo a")).stdout.strip()
    await run_cli(cli_env, "job", "queue", "--command", "echo default")

    shown = await run_cli(team, "job", "get", job_id)
    listed = json.loads((await run_cli(team, "job", "list", "-o", "json")).stdout)

    assert "namespace:" in shown.stdout
    assert "team-a" in shown.stdout
    assert [(j["id"], j["namespace"]) for j in listed] == [(job_id, "team-a")]


async def test_a_malformed_namespace_setting_is_one_error_line(
    platform: list[HodeiService], cli_env: dict[str, str]
) -> None:
    result = await run_cli(in_namespace(cli_env, "Team_A"), "job", "list")

    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: HODEI_NAMESPACE: namespace 'Team_A' is not valid: a namespace is 1 to 63 "
        "lower-case letters, digits or '-', starting and ending with a letter or digit\n")
