"""A job's log on the embedded platform, through the real CLI: attach at any time, resume,
filter, big and awkward output, the byte cap, the archive after the stream and a restart."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from hodei_common.contracts import subjects
from hodei_common.messaging import connect
from hodei_common.testing import assert_eventually
from tests.cli.conftest import HODEI, CliResult, run_cli
from tests.e2e.conftest import Platform, start_platform, stop_platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CAP = 8_000_000  # bytes of output each job's log keeps on this platform


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    root = Path(tempfile.mkdtemp(prefix="hodei-e2e-logs-"))
    root.chmod(0o755)
    running = start_platform(root / "home", {"HODEI_LOG_MAX_BYTES": str(CAP)})
    try:
        yield running
    finally:
        stop_platform(running)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class RawResult:
    code: int
    stdout: bytes
    stderr: bytes


async def run_raw(env: dict[str, str], *args: str) -> RawResult:
    proc = await asyncio.create_subprocess_exec(
        HODEI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return RawResult(proc.returncode, out, err)


async def queue(platform: Platform, command: str) -> str:
    queued = await run_cli(platform.env, "job", "queue", "--command", command)
    assert queued.code == 0, queued.stderr
    return queued.stdout.strip()


async def state(platform: Platform, job_id: str) -> str:
    shown = await run_cli(platform.env, "job", "get", job_id, "-o", "json")
    return str(json.loads(shown.stdout)["state"])


async def finished(platform: Platform, job_id: str, within_s: float = 30) -> None:
    async def done() -> bool:
        return await state(platform, job_id) in {"SUCCEEDED", "FAILED"}

    await assert_eventually(done, within_s=within_s)


async def logs(platform: Platform, job_id: str, *flags: str) -> CliResult:
    return await run_cli(platform.env, "job", "logs", job_id, *flags)


async def test_a_reader_attached_before_the_job_is_assigned_gets_it_all_then_the_exit_code(
    platform: Platform,
) -> None:
    await run_cli(platform.env, "provider", "set", "local", "--max-workers", "0")
    try:
        job_id = await queue(platform, "for i in 1 2 3; do echo out $i; echo err $i >&2; done; "
                                       "exit 3")
        follower = asyncio.create_task(logs(platform, job_id, "--follow"))
        await asyncio.sleep(1.0)
        assert await state(platform, job_id) == "QUEUED"
        assert not follower.done()
    finally:
        await run_cli(platform.env, "provider", "set", "local", "--max-workers", "8")
    result = await follower
    assert result.code == 3
    assert result.stdout == "out 1\nout 2\nout 3\n"
    assert result.stderr.splitlines()[:3] == ["err 1", "err 2", "err 3"]
    assert "FAILED (exit code 3)" in result.stderr


async def test_a_reader_attached_while_the_job_runs_gets_every_line_once_in_order(
    platform: Platform,
) -> None:
    # Long enough to be still running after a few CLI calls on a loaded machine.
    job_id = await queue(platform, "echo first; sleep 5; seq 2 3000")

    async def first_line_out() -> bool:
        return (await logs(platform, job_id)).stdout.startswith("first\n")

    await assert_eventually(first_line_out, within_s=20)
    assert await state(platform, job_id) == "RUNNING"
    result = await logs(platform, job_id, "--follow")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == ["first", *(str(i) for i in range(2, 3001))]


async def test_tail_since_stream_and_timestamps_pick_lines_of_a_finished_job(
    platform: Platform,
) -> None:
    job_id = await queue(platform, "seq 1 10; echo oops >&2")
    await finished(platform, job_id)
    tail = await logs(platform, job_id, "--tail", "3")
    assert (tail.stdout, tail.stderr) == ("9\n10\n", "oops\n")
    assert (await logs(platform, job_id, "--tail", "2", "--follow")).stdout == "10\n"
    since = await logs(platform, job_id, "--since", "7")
    assert (since.stdout, since.stderr) == ("8\n9\n10\n", "oops\n")
    assert (await logs(platform, job_id, "--since", "1:10")).stdout == ""
    assert (await logs(platform, job_id, "--since", "1h")).stdout.splitlines()[0] == "1"
    assert (await logs(platform, job_id, "--since", "2099-01-01T00:00:00Z")).stdout == ""
    errors_only = await logs(platform, job_id, "--stream", "stderr")
    assert (errors_only.stdout, errors_only.stderr) == ("", "oops\n")
    stamped = (await logs(platform, job_id, "--timestamps")).stdout.splitlines()
    assert len(stamped) == 10
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \d+", s) for s in stamped)


async def test_awkward_output_comes_back_byte_for_byte(platform: Platform) -> None:
    command = ("printf 'bar 10%%\\rbar 100%%\\r\\nbad \\377 byte\\n'; "
               "head -c 300000 /dev/zero | tr '\\0' y >&2; printf 'no newline'")
    run = await run_raw(platform.env, "job", "run", "--command", command)
    assert run.code == 0, run.stderr
    assert run.stdout == b"bar 10%\rbar 100%\r\nbad \xff byte\nno newline"
    assert run.stderr == b"y" * 300000


async def test_output_past_the_cap_ends_in_a_notice_and_marks_the_job(
    platform: Platform,
) -> None:
    run = await run_raw(platform.env, "job", "run", "--command", "seq 1 2000000")
    assert run.code == 0
    kept = run.stdout.decode().splitlines()
    assert kept == [str(i) for i in range(1, len(kept) + 1)]
    assert CAP - 10 <= len(run.stdout) <= CAP
    notices = run.stderr.decode().splitlines()
    assert notices[0].startswith("hodei: output truncated: this job's log reached its cap")
    assert notices[1].startswith("hodei: output truncated: ")
    listed = json.loads((await run_cli(platform.env, "job", "list", "-o", "json",
                                       "--limit", "1")).stdout)[0]

    async def marked() -> bool:
        shown = await run_cli(platform.env, "job", "get", listed["id"], "-o", "json")
        return bool(json.loads(shown.stdout)["log_truncated"])

    await assert_eventually(marked, within_s=15)


async def test_a_million_lines_are_read_back_in_order_by_a_cli_of_bounded_memory(
    platform: Platform,
) -> None:
    job_id = await queue(platform, "seq 1 1000000 >&2")
    await finished(platform, job_id, within_s=60)
    # The CLI's peak memory, measured by a parent that waits for it.
    probe = ("import resource, subprocess, sys; "
             "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
             "stderr=subprocess.PIPE); "
             "lines = done.stderr.split(b'\\n'); "
             "ordered = lines[:-1] == [str(i).encode() for i in range(1, len(lines))]; "
             "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
             "len(lines) - 1, ordered)")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, HODEI, "job", "logs", job_id, env=platform.env,
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    code, peak_kib, count, ordered = out.decode().split()
    assert (code, count, ordered) == ("0", "1000000", "True")
    assert int(peak_kib) < 150 * 1024


async def test_a_log_is_read_from_its_archive_after_the_stream_dropped_it_and_a_restart(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    running = start_platform(home)
    try:
        job_id = await queue(running, "seq 1 2000; echo bye >&2; exit 4")
        await finished(running, job_id)
        conn = await asyncpg.connect(running.endpoints["database_url"])
        try:
            async def archived() -> bool:
                return bool(await conn.fetchval(
                    "SELECT entry_count FROM job_log_files WHERE job_id = $1::uuid", job_id))

            await assert_eventually(archived, within_s=15)
        finally:
            await conn.close()
        # What the stream's max age does to old logs, at once.
        nc = await connect(running.test_settings(), "test", initial_attempts=3)
        try:
            await nc.jetstream().purge_stream(subjects.LOGS_STREAM)
        finally:
            await nc.close()
        after_purge = await logs(running, job_id, "--follow")
    finally:
        stop_platform(running)
    running = start_platform(home)
    try:
        after_restart = await logs(running, job_id, "--follow")
    finally:
        stop_platform(running)
    for result in (after_purge, after_restart):
        assert result.code == 4
        assert result.stdout.splitlines() == [str(i) for i in range(1, 2001)]
        assert result.stderr.splitlines()[0] == "bye"
