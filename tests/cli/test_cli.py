"""The `hodei` CLI against the real platform: output for people and scripts, one-line errors."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from hodei_common.runner import HodeiService
from tests.cli.conftest import run_cli

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

JOB_FIELDS = {
    "id", "name", "state", "command", "args", "env", "env_keys", "timeout_s", "provider", "attempt",
    "worker_id", "exit_code", "error", "created_at", "started_at", "completed_at", "updated_at",
}
WORKER_FIELDS = {
    "id", "state", "provider", "provider_resource_id", "last_heartbeat", "current_job_id",
}


async def counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    return (
        await pool.fetchval("SELECT count(*) FROM jobs"),
        await pool.fetchval("SELECT count(*) FROM outbox_events"),
        await pool.fetchval("SELECT count(*) FROM domain_events"),
    )


async def test_queue_prints_only_the_job_id_and_get_shows_it_queued(
    platform: list[HodeiService], cli_env: dict[str, str]
) -> None:
    queued = await run_cli(cli_env, "job", "queue", "--name", "hello", "--command", "echo hello")
    assert queued.code == 0, queued.stderr
    job_id = uuid.UUID(queued.stdout.strip())
    shown = await run_cli(cli_env, "job", "get", str(job_id))
    assert shown.code == 0, shown.stderr
    assert "state:" in shown.stdout
    assert "QUEUED" in shown.stdout
    by_option = await run_cli(cli_env, "job", "get", "--id", str(job_id), "--output", "json")
    job = json.loads(by_option.stdout)
    assert set(job) >= JOB_FIELDS
    assert job["id"] == str(job_id)
    assert job["name"] == "hello"
    assert job["state"] == "QUEUED"


async def test_queue_parses_env_args_and_timeout_like_the_old_cli(
    platform: list[HodeiService], cli_env: dict[str, str]
) -> None:
    queued = await run_cli(
        cli_env, "job", "queue", "--name", "env", "--command", "bash",
        "--args", "-c 'echo Processing file test.txt && echo Done'",
        "--env", "MY_VAR=hello_world,NUM_VAR=42", "--timeout", "30", "--output", "json",
    )
    assert queued.code == 0, queued.stderr
    job = json.loads(queued.stdout)
    assert job["args"] == ["-c", "echo Processing file test.txt && echo Done"]
    assert (job["env"], job["env_keys"]) == ({}, ["MY_VAR", "NUM_VAR"])
    assert job["timeout_s"] == 30
    shown = await run_cli(cli_env, "job", "get", job["id"], "--show-env", "-o", "json")
    assert json.loads(shown.stdout)["env"] == {"MY_VAR": "hello_world", "NUM_VAR": "42"}


async def test_idempotency_key_returns_the_same_job(
    platform: list[HodeiService], cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    args = ("job", "queue", "--command", "echo once", "--idempotency-key", "deploy-42")
    first = await run_cli(cli_env, *args)
    second = await run_cli(cli_env, *args)
    assert first.code == second.code == 0
    assert first.stdout == second.stdout
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["job", "queue", "--command", ""], "--command must not be empty"),
        (["job", "queue", "--command", "echo", "--timeout", "-5"], "positive number of seconds"),
        (["job", "queue", "--command", "echo", "--timeout", "0"], "positive number of seconds"),
        (["job", "queue", "--command", "echo", "--timeout", "soon"], "--timeout"),
        (["job", "queue", "--command", "echo", "--env", "NOEQUALS"], "is not KEY=VALUE"),
        (["job", "queue", "--command", "echo", "--env", "A-B=1"], "not a valid variable name"),
        (["job", "queue", "--command", "echo", "--args", "'unclosed"], "--args"),
        (["job", "queue", "--command", "echo", "--provider", "mainframe"], "unknown provider"),
        (["job", "queue", "--command", "echo", "--provider", "docker"], "disabled"),
        (["job", "queue", "--command", "echo", "--frobnicate"], "No such option"),
        (["job", "queue", "--command", "x" * 70_000], "64 KiB"),
        (["job", "get", "not-a-uuid"], "not a valid job id"),
        (["job", "cancel", "12345"], "not a valid job id"),
        (["job", "events", "--id", "zzz"], "not a valid job id"),
        (["job", "get", str(uuid.UUID(int=7))], "not found"),
        (["job", "explain", "not-a-uuid"], "not a valid job id"),
        (["job", "explain", str(uuid.UUID(int=7))], "not found"),
        (["job", "list", "--state", "SLEEPING"], "unknown state"),
        (["service", "mailer"], "unknown service"),
        (["job", "queue", "--command", "x", "--memory", "-5"], "--memory must be a size"),
        (["job", "queue", "--command", "x", "--memory", "1x"], "--memory must be a size"),
        (["job", "queue", "--command", "x", "--memory", "63m"], "from 64m"),
        (["job", "queue", "--command", "x", "--cpus", "abc"], "--cpus must be a number"),
        (["job", "run", "--command", "x", "--cpus", "0"], "--cpus must be a number"),
        (["job", "queue", "--command", "x", "--cpus", "nan"], "--cpus must be a number"),
        (["job", "logs", str(uuid.UUID(int=7)), "--tail", "-1"], "--tail must be"),
        (["job", "logs", str(uuid.UUID(int=7)), "--since", "garbage"], "--since 'garbage'"),
        (["job", "logs", str(uuid.UUID(int=7)), "--since", "0:5"], "numbered from 1"),
        (["job", "logs", str(uuid.UUID(int=7)), "--stream", "foo"], "stdout or stderr"),
        (["job", "logs", str(uuid.UUID(int=7))], "not found"),
    ],
)
async def test_bad_input_is_one_error_line_and_changes_nothing(
    platform: list[HodeiService],
    cli_env: dict[str, str],
    pool: asyncpg.Pool,
    args: list[str],
    message: str,
) -> None:
    before = await counts(pool)
    result = await run_cli(cli_env, *args)
    assert result.code != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert await counts(pool) == before


async def test_limits_are_stored_with_the_job(
    platform: list[HodeiService], cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    result = await run_cli(cli_env, "job", "queue", "--command", "x", "--cpus", "0.5",
                           "--memory", "256m")
    assert result.code == 0, result.stderr
    row = await pool.fetchrow("SELECT cpus, memory_bytes FROM jobs WHERE id = $1",
                              uuid.UUID(result.stdout.strip()))
    assert row is not None
    assert (row["cpus"], row["memory_bytes"]) == (0.5, 256 * 2**20)


async def test_list_filters_by_state_newest_first(
    platform: list[HodeiService], cli_env: dict[str, str]
) -> None:
    ids = []
    for i in range(3):
        r = await run_cli(cli_env, "job", "queue", "--command", f"echo {i}")
        ids.append(r.stdout.strip())
    await run_cli(cli_env, "job", "cancel", ids[1])
    listed = json.loads((await run_cli(cli_env, "job", "list", "-o", "json")).stdout)
    assert [j["id"] for j in listed] == list(reversed(ids))
    queued = json.loads(
        (await run_cli(cli_env, "job", "list", "--state", "queued", "-o", "json")).stdout
    )
    assert [j["id"] for j in queued] == [ids[2], ids[0]]
    table = await run_cli(cli_env, "job", "list")
    header, *rows = table.stdout.strip().splitlines()
    assert header.split()[:4] == ["ID", "NAMESPACE", "NAME", "STATE"]
    assert len(rows) == 3
    assert {row.split()[1] for row in rows} == {"default"}


async def test_cancel_and_events_tell_the_jobs_story_in_order(
    platform: list[HodeiService], cli_env: dict[str, str]
) -> None:
    job_id = (await run_cli(cli_env, "job", "queue", "--command", "sleep 100")).stdout.strip()
    cancelled = await run_cli(cli_env, "job", "cancel", job_id)
    assert cancelled.code == 0
    assert "CANCELLED" in cancelled.stdout
    again = await run_cli(cli_env, "job", "cancel", job_id)
    assert again.code != 0
    assert "already CANCELLED" in again.stderr
    events = json.loads((await run_cli(cli_env, "job", "events", job_id, "-o", "json")).stdout)
    assert [e["event_type"] for e in events] == ["JobCreated", "JobCancelled"]
    table = await run_cli(cli_env, "job", "events", job_id)
    assert [line.split()[2] for line in table.stdout.splitlines()[1:]] == [
        "JobCreated", "JobCancelled"
    ]


async def test_worker_and_provider_lists(
    platform: list[HodeiService], cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    worker_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO workers (id, provider, state, provider_resource_id) "
        "VALUES ($1, 'local', 'READY', '4242')",
        worker_id,
    )
    workers = json.loads((await run_cli(cli_env, "worker", "list", "-o", "json")).stdout)
    assert len(workers) == 1
    assert set(workers[0]) >= WORKER_FIELDS
    assert workers[0]["last_heartbeat"] is None
    assert workers[0]["provider_resource_id"] == "4242"
    table = await run_cli(cli_env, "worker", "list")
    assert "never" in table.stdout
    providers = json.loads((await run_cli(cli_env, "provider", "list", "-o", "json")).stdout)
    assert {p["name"]: p["enabled"] for p in providers} == {
        "docker": False, "kubernetes": False, "local": True,
    }


async def test_cli_without_a_platform_says_so_in_one_line(cli_env: dict[str, str]) -> None:
    env = dict(cli_env)
    env["HODEI_NATS_URL"] = "nats://127.0.0.1:1"
    result = await run_cli(env, "job", "list")
    assert result.code != 0
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("error: ")
    ]
    assert "cannot reach NATS" in result.stderr


async def test_provider_set_changes_the_worker_mode_and_pool(
    platform: list[HodeiService], cli_env: dict[str, str]
) -> None:
    result = await run_cli(cli_env, "provider", "set", "local", "--mode", "reusable",
                           "--min-idle", "1", "--max-jobs", "5", "--idle-ttl", "30",
                           "-o", "json")
    assert result.code == 0, result.stderr
    provider = json.loads(result.stdout)
    assert (provider["worker_mode"], provider["min_idle"]) == ("reusable", 1)
    assert provider["settings"] == {"max_jobs": 5, "idle_ttl_s": 30}
    listed = json.loads((await run_cli(cli_env, "provider", "list", "-o", "json")).stdout)
    assert {p["name"]: p["worker_mode"] for p in listed}["local"] == "reusable"


async def test_provider_set_changes_the_docker_image_default_limits_and_network(
    platform: list[HodeiService], cli_env: dict[str, str]
) -> None:
    result = await run_cli(cli_env, "provider", "set", "docker", "--image", "my/agent:1",
                           "--cpus", "2", "--memory", "1g", "--network", "bridge", "-o", "json")
    assert result.code == 0, result.stderr
    provider = json.loads(result.stdout)
    assert provider["image"] == "my/agent:1"
    assert provider["settings"] == {"cpus": 2, "memory_bytes": 2**30, "network_mode": "bridge"}
    cleared = await run_cli(cli_env, "provider", "set", "docker", "--cpus", "0", "--network", "",
                            "-o", "json")
    assert json.loads(cleared.stdout)["settings"] == {"memory_bytes": 2**30}


async def test_provider_set_changes_any_setting_of_the_kind_with_set(
    platform: list[HodeiService], cli_env: dict[str, str]
) -> None:
    result = await run_cli(cli_env, "provider", "set", "docker", "--set", "network_mode=none",
                           "--set", "max_jobs=3", "--set", "cpus=", "-o", "json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["settings"] == {
        "memory_bytes": 512 * 2**20, "network_mode": "none", "max_jobs": 3}
    listed = await run_cli(cli_env, "provider", "list")
    assert "max_jobs=3" in listed.stdout
    assert "network_mode=none" in listed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["provider", "set", "local", "--mode", "forever"], "unknown mode 'forever'"),
        (["provider", "set", "local", "--min-idle", "-1"], "--min-idle"),
        (["provider", "set", "mainframe", "--min-idle", "1"], "unknown provider"),
        (["provider", "set", "local", "--min-idle", "500"], "larger than max_workers"),
        (["provider", "set", "docker", "--cpus", "abc"], "--cpus must be a number"),
        (["provider", "set", "docker", "--memory", "-5"], "--memory must be a size"),
        (["provider", "set", "docker", "--image", " "], "--image must not be empty"),
        (["provider", "set", "local", "--network", "host"],
         "'network_mode' is not a setting of local providers"),
        (["provider", "set", "local", "--max-jobs", "2", "--set", "colour=blue"],
         "'colour' is not a setting of local providers"),
        (["provider", "set", "local", "--set", "max_jobs=many"],
         'max_jobs must be a whole number of jobs, at least 1 (got "many")'),
        (["provider", "set", "local", "--set", "idle_ttl_s=-1"],
         "idle_ttl_s must be a number of seconds above 0"),
        (["provider", "set", "docker", "--set", "cpus=NaN"], "cpus must be a number of CPUs"),
        (["provider", "set", "local", "--set", "max_jobs"], "--set takes KEY=VALUE"),
        (["provider", "set", "local", "--max-jobs", "2", "--set", "max_jobs=3"],
         "--set max_jobs names a setting given twice"),
    ],
)
async def test_bad_provider_settings_are_one_error_line(
    platform: list[HodeiService], cli_env: dict[str, str], pool: asyncpg.Pool,
    args: list[str], message: str,
) -> None:
    before = await pool.fetch("SELECT * FROM provider_configs ORDER BY name")
    result = await run_cli(cli_env, *args)
    assert result.code != 0
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert await pool.fetch("SELECT * FROM provider_configs ORDER BY name") == before
