"""Running one job: its reports, its output, its environment, its end."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from hodei_common.contracts import subjects
from hodei_common.contracts.agent import ControlAction, Outcome, StatusKind
from hodei_common.contracts.logs import LogStream
from hodei_common.contracts.workers import WorkerMode
from hodei_common.testing import assert_eventually
from tests.agent.harness import TOKEN, Platform

pytestmark = pytest.mark.nats


def live_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that still run (zombies do not)."""
    pids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_file.read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            pids.append(int(stat_file.parent.name))
    return pids


async def test_a_job_ending_at_once_is_reported_once_with_its_start_and_output(
    platform: Platform,
) -> None:
    agent = await platform.start_agent()
    job = await platform.assign("echo hello")
    finished = await platform.finished(job)
    assert [s.kind for s in platform.reports(job)] == [StatusKind.FINISHED]
    assert finished.leaving == "its one job finished (ephemeral)"
    assert finished.started_at is not None
    assert finished.started_at <= finished.at
    assert (finished.outcome, finished.exit_code, finished.error) == (Outcome.SUCCEEDED, 0, None)
    assert finished.log_lines == 1
    assert finished.duration_s is not None
    assert finished.duration_s >= 0
    assert platform.texts(job) == ["hello"]  # every line is stored before FINISHED
    assert await agent.exit_code() == 0


async def test_a_longer_job_reports_started_while_it_runs(platform: Platform) -> None:
    await platform.start_agent()
    job = await platform.assign("sleep 0.5; echo done")
    await assert_eventually(lambda: platform.reports(job), within_s=5)
    started = platform.reports(job)[0]
    assert started.kind is StatusKind.STARTED  # reported while the job still sleeps
    finished = await platform.finished(job)
    assert [s.kind for s in platform.reports(job)] == [StatusKind.STARTED, StatusKind.FINISHED]
    assert finished.started_at is None  # said once, by STARTED
    assert (finished.at - started.at).total_seconds() >= 0.4


async def test_stdout_and_stderr_are_both_captured_and_marked(platform: Platform) -> None:
    await platform.start_agent()
    job = await platform.assign("echo to-out; echo to-err >&2")
    await platform.finished(job)
    streams = {line.text: line.stream for line in platform.lines(job)}
    assert streams == {"to-out": LogStream.STDOUT, "to-err": LogStream.STDERR}
    assert sorted(line.seq for line in platform.lines(job)) == [1, 2]


async def test_script_lines_arrive_in_order(platform: Platform) -> None:
    await platform.start_agent()
    job = await platform.assign("echo Step1; echo Step2; echo Step3")
    await platform.finished(job)
    assert platform.texts(job) == ["Step1", "Step2", "Step3"]
    assert [line.seq for line in platform.lines(job)] == [1, 2, 3]


async def test_job_env_reaches_the_command_but_the_agent_secrets_do_not(
    platform: Platform,
) -> None:
    await platform.start_agent()
    job = await platform.assign("env", env={"MY_VAR": "hello_world"})
    await platform.finished(job)
    texts = platform.texts(job)
    assert "MY_VAR=hello_world" in texts
    assert not [t for t in texts if t.startswith("HODEI_") or TOKEN in t]
    assert any(t.startswith("PATH=") for t in texts)


async def test_args_are_appended_as_shell_words(platform: Platform) -> None:
    await platform.start_agent()
    job = await platform.assign(
        "bash", args=["-c", "echo Processing file test.txt && echo Done"])
    finished = await platform.finished(job)
    assert finished.outcome is Outcome.SUCCEEDED
    assert platform.texts(job) == ["Processing file test.txt", "Done"]


async def test_non_zero_exit_is_failed_with_its_exit_code(platform: Platform) -> None:
    await platform.start_agent()
    job = await platform.assign("echo failing; exit 3")
    finished = await platform.finished(job)
    assert (finished.outcome, finished.exit_code) == (Outcome.FAILED, 3)
    assert platform.texts(job) == ["failing"]


async def test_missing_binary_fails_with_127_and_a_clear_error(platform: Platform) -> None:
    await platform.start_agent()
    job = await platform.assign("no-such-binary-hodei --flag")
    finished = await platform.finished(job)
    assert (finished.outcome, finished.exit_code) == (Outcome.FAILED, 127)
    assert finished.error == "command not found (exit 127)"
    assert any("not found" in t for t in platform.texts(job))


async def test_timeout_kills_the_whole_process_group(platform: Platform) -> None:
    await platform.start_agent()
    job = await platform.assign("echo $$; sleep 60 & sleep 60", timeout_s=1)
    finished = await platform.finished(job)
    assert finished.outcome is Outcome.TIMED_OUT
    assert finished.exit_code == 143  # SIGTERM, as a shell reports it
    assert finished.error == "timed out after 1s"
    pgid = int(platform.texts(job)[0])
    assert live_members(pgid) == []


async def test_cancel_order_kills_the_job_and_reports_cancelled(platform: Platform) -> None:
    await platform.start_agent()
    job = await platform.assign("echo $$; echo ready; sleep 60")
    await assert_eventually(lambda: "ready" in platform.texts(job))
    await platform.control(ControlAction.CANCEL, job)
    finished = await platform.finished(job)
    assert finished.outcome is Outcome.CANCELLED
    assert finished.error == "cancelled: test"
    assert live_members(int(platform.texts(job)[0])) == []


async def test_background_processes_do_not_outlive_the_job(platform: Platform) -> None:
    await platform.start_agent()
    job = await platform.assign("sleep 100 & echo $$")
    finished = await platform.finished(job)
    assert (finished.outcome, finished.exit_code) == (Outcome.SUCCEEDED, 0)
    assert live_members(int(platform.texts(job)[0])) == []


async def test_a_command_that_cannot_start_fails_without_an_exit_code(
    platform: Platform,
) -> None:
    await platform.start_agent()
    job = await platform.assign("echo never", env={"BAD": "nul\x00byte"})
    finished = await platform.finished(job)
    assert (finished.outcome, finished.exit_code) == (Outcome.FAILED, None)
    assert finished.error is not None
    assert finished.error.startswith("cannot start the command:")
    assert [s.kind for s in platform.reports(job)] == [StatusKind.FINISHED]


async def test_each_job_runs_in_a_fresh_directory_removed_afterwards(
    platform: Platform,
) -> None:
    platform.serve(WorkerMode.REUSABLE)
    agent = await platform.start_agent()
    jobs_dir = platform.workdir / "jobs"
    first = await platform.assign("pwd; touch scratch-file; ls")
    await platform.finished(first)
    workdir, listing = platform.texts(first)
    assert Path(workdir).parent == jobs_dir
    assert Path(workdir).name.startswith(f"job-{first.job_id}-")
    assert listing == "scratch-file"
    # Removed right after FINISHED is reported; the next job's is made while none runs.
    await assert_eventually(lambda: not Path(workdir).exists(), within_s=5)
    await assert_eventually(lambda: [d.name[:9] for d in jobs_dir.iterdir()] == ["job-next-"],
                            within_s=5)
    second = await platform.assign("pwd; ls")
    await platform.finished(second)
    (workdir,) = platform.texts(second)  # `ls` printed nothing: fresh, none of the first's
    assert Path(workdir).name.startswith(f"job-{second.job_id}-")
    # Stopped while it waits for a third, the agent leaves nothing behind: not the directory
    # it made for that one either.
    await assert_eventually(lambda: [d.name[:9] for d in jobs_dir.iterdir()] == ["job-next-"],
                            within_s=5)
    agent.signal(signal.SIGTERM)
    assert await agent.exit_code() == 0
    assert list(jobs_dir.iterdir()) == []


async def test_a_huge_line_is_split_and_a_last_line_without_newline_counts(
    platform: Platform,
) -> None:
    await platform.start_agent(HODEI_LOG_MAX_LINE_BYTES="1000")
    job = await platform.assign("head -c 2500 /dev/zero | tr '\\0' x; echo; printf tail")
    await platform.finished(job)
    assert platform.texts(job) == ["x" * 1000, "x" * 1000, "x" * 500, "tail"]


async def test_output_that_cannot_be_stored_fails_the_job_with_a_clear_error(
    platform: Platform,
) -> None:
    await platform.js.delete_stream(subjects.LOGS_STREAM)
    await platform.start_agent(HODEI_PUBLISH_ATTEMPTS="2")
    job = await platform.assign("echo hello")
    finished = await platform.reached(job, StatusKind.FINISHED)
    assert (finished.outcome, finished.exit_code) == (Outcome.FAILED, 0)
    assert finished.error is not None
    assert finished.error.startswith("the job's output could not be published:")


async def test_an_agent_killed_9_takes_its_running_job_with_it(platform: Platform) -> None:
    agent = await platform.start_agent()
    job = await platform.assign("echo $$; sleep 30")
    await platform.reached(job, StatusKind.STARTED)
    shell = int(await assert_eventually(lambda: platform.texts(job) and platform.texts(job)[0]))
    agent.signal(signal.SIGKILL)
    await agent.exit_code()
    await assert_eventually(lambda: not Path(f"/proc/{shell}").exists()
                            or b"Z" in Path(f"/proc/{shell}/stat").read_bytes().split(b")")[-1][:3],
                            within_s=5, message="the job outlived its agent")
