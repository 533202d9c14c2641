"""The old system's end-to-end procedure on the embedded platform with local workers."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from hodei_common.testing import assert_eventually
from tests.cli.conftest import CliResult, run_cli
from tests.e2e.conftest import Platform, agent_processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def finished_job(platform: Platform, result: CliResult, within_s: float) -> dict[str, object]:
    """The job of a `job run` (its id is in the JSON of `job list`), checked like the old
    procedure: terminal state in time, its worker TERMINATED, no agent left behind."""
    jobs = json.loads((await run_cli(platform.env, "job", "list", "-o", "json", "--limit",
                                     "1")).stdout)
    job = jobs[0]
    assert job["state"] in {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}
    assert job["worker_id"] is not None

    async def worker_terminated() -> bool:
        workers = json.loads((await run_cli(platform.env, "worker", "list", "-o",
                                            "json")).stdout)
        return any(w["id"] == job["worker_id"] and w["state"] == "TERMINATED" for w in workers)

    await assert_eventually(worker_terminated, within_s=10)
    await assert_eventually(lambda: not agent_processes(platform.nats_url), within_s=10,
                            message="agent processes left behind")
    return job


async def run_job(platform: Platform, *args: str, within_s: float = 15) -> tuple[CliResult, float]:
    started = time.monotonic()
    result = await run_cli(platform.env, "job", "run", *args, timeout_s=within_s + 30)
    return result, time.monotonic() - started


async def test_echo_prints_hello_and_exits_zero(platform: Platform) -> None:
    result, took = await run_job(platform, "--name", "echo", "--command", "echo hello")
    assert (result.code, result.stdout) == (0, "hello\n"), result.stderr
    assert took < 15
    job = await finished_job(platform, result, 15)
    assert job["state"] == "SUCCEEDED"
    assert job["exit_code"] == 0
    logs = await run_cli(platform.env, "job", "logs", str(job["id"]))
    assert logs.stdout == "hello\n"
    events = json.loads((await run_cli(platform.env, "job", "events", str(job["id"]),
                                       "-o", "json")).stdout)
    assert [e["event_type"] for e in events if e["aggregate_type"] == "job"] == [
        "JobCreated", "JobAssigned", "JobAccepted", "JobStarted", "JobSucceeded"]
    # The worker's part of the run is in the same trail, in order, and all of it carries
    # the job as its correlation id.
    worker = [e["event_type"] for e in events if e["aggregate_id"] == job["worker_id"]]
    assert worker[0] == "ProvisionRequested"
    assert {"WorkerCreated", "WorkerRegistered", "WorkerReady"} <= set(worker)
    # (a beat sent while its agent was being stopped may add WorkerStopOrdered at the end)
    assert worker.index("WorkerReady") < worker.index("WorkerTerminating") < worker.index(
        "WorkerTerminated")
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert {e["correlation_id"] for e in events} == {job["id"]}


async def test_steps_arrive_live_in_order(platform: Platform) -> None:
    result, _ = await run_job(
        platform, "--command", "bash -c 'echo Step1 && sleep 1 && echo Step2 && sleep 1 && echo "
        "Step3'")
    assert result.code == 0, result.stderr
    assert result.stdout == "Step1\nStep2\nStep3\n"
    job = await finished_job(platform, result, 15)
    logs = await run_cli(platform.env, "job", "logs", str(job["id"]), "--follow")
    assert logs.stdout == "Step1\nStep2\nStep3\n"


async def test_five_iterations_of_two_seconds(platform: Platform) -> None:
    result, took = await run_job(
        platform, "--command", "for i in 1 2 3 4 5; do echo iteration $i; sleep 2; done",
        within_s=20)
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [f"iteration {i}" for i in range(1, 6)]
    assert took < 20
    await finished_job(platform, result, 20)


async def test_env_vars_reach_the_command(platform: Platform) -> None:
    result, _ = await run_job(platform, "--command", 'echo "$MY_VAR $NUM_VAR"',
                              "--env", "MY_VAR=hello_world,NUM_VAR=42")
    assert (result.code, result.stdout) == (0, "hello_world 42\n"), result.stderr
    await finished_job(platform, result, 15)


async def test_a_secret_env_value_reaches_the_command_but_no_output_but_get_show_env(
    platform: Platform,
) -> None:
    secret = "s3cr3t-value"
    result, _ = await run_job(platform, "--command", "echo $API_TOKEN",
                              "--env", f"API_TOKEN={secret},MODE=x")
    assert (result.code, result.stdout) == (0, f"{secret}\n"), result.stderr
    job = await finished_job(platform, result, 15)
    job_id = str(job["id"])

    for command in (("list",), ("get", job_id), ("explain", job_id), ("events", job_id)):
        shown = await run_cli(platform.env, "job", *command, "-o", "json")
        assert shown.code == 0, shown.stderr
        assert secret not in shown.stdout, command
    assert job["env_keys"] == ["API_TOKEN", "MODE"]
    revealed = await run_cli(platform.env, "job", "get", job_id, "--show-env", "-o", "json")
    assert json.loads(revealed.stdout)["env"] == {"API_TOKEN": secret, "MODE": "x"}


async def test_args_are_appended_as_shell_words(platform: Platform) -> None:
    result, _ = await run_job(platform, "--command", "bash",
                              "--args", "-c 'echo Processing file test.txt && echo Done'")
    assert (result.code, result.stdout) == (0, "Processing file test.txt\nDone\n"), result.stderr
    await finished_job(platform, result, 15)


async def test_exit_3_fails_with_exit_code_3(platform: Platform) -> None:
    result, _ = await run_job(platform, "--command", "echo before; exit 3")
    assert result.code == 3
    assert result.stdout == "before\n"
    job = await finished_job(platform, result, 15)
    assert (job["state"], job["exit_code"]) == ("FAILED", 3)


async def test_missing_binary_fails_with_a_clear_error(platform: Platform) -> None:
    result, _ = await run_job(platform, "--command", "definitely-not-a-command-xyz")
    assert result.code == 127
    assert "not found" in result.stderr
    job = await finished_job(platform, result, 15)
    assert job["state"] == "FAILED"
    assert "not found" in str(job["error"])


async def test_timeout_kills_the_command_and_exits_124(platform: Platform) -> None:
    marker = f"60.{uuid.uuid4().int % 10**8:08d}"  # a sleep length no other process has
    result, took = await run_job(platform, "--command", f"sleep {marker}", "--timeout", "2")
    assert result.code == 124, result.stderr
    assert took < 15
    job = await finished_job(platform, result, 15)
    assert job["state"] == "TIMED_OUT"
    survivors = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                 and marker.encode() in _cmdline(p)]
    assert survivors == []


async def test_a_batch_of_five_runs_at_once(platform: Platform) -> None:
    results = await asyncio.gather(*(
        run_job(platform, "--command", f"echo job {i}; sleep 1; echo done {i}")
        for i in range(5)))
    for i, (result, took) in enumerate(results):
        assert result.code == 0, result.stderr
        assert result.stdout == f"job {i}\ndone {i}\n"
        assert took < 15
    await assert_eventually(lambda: not agent_processes(platform.nats_url), within_s=10)


async def test_queue_then_logs_follow_never_misses_a_line_of_a_finished_job(
    platform: Platform,
) -> None:
    queued = await run_cli(platform.env, "job", "queue", "--command", "seq 1 500")
    job_id = queued.stdout.strip()

    async def finished() -> bool:
        shown = json.loads((await run_cli(platform.env, "job", "get", job_id, "-o",
                                          "json")).stdout)
        return shown["state"] == "SUCCEEDED"

    await assert_eventually(finished, within_s=15)
    logs = await run_cli(platform.env, "job", "logs", job_id, "--follow")
    assert logs.stdout.splitlines() == [str(i) for i in range(1, 501)]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_no_agent_is_left_running_after_the_module(platform: Platform) -> None:
    assert os.path.exists(platform.home / "dev.json")
    assert agent_processes(platform.nats_url) == []
