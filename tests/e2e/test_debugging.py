"""The recipes of docs/debugging.md on the embedded platform, with the creds of its home."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from hodei_common.contracts import subjects
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from tests.cli.conftest import HODEI, run_cli
from tests.e2e.conftest import Platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def received(out: str) -> list[str]:
    """The subject of each printed message, in order."""
    return [line.split('"')[1] for line in out.splitlines() if line.startswith("[#")]


async def read_until(stream: asyncio.StreamReader, *wanted: str, within_s: float = 30) -> str:
    """What ``stream`` gave until every one of ``wanted`` appeared in it."""
    seen = ""

    async def more() -> None:
        nonlocal seen
        while not all(w in seen for w in wanted):
            line = await stream.readline()
            assert line, f"the watch ended early:\n{seen}"
            seen += line.decode()

    await asyncio.wait_for(more(), within_s)
    return seen


async def test_following_one_job_live_then_replaying_its_events_and_reports(
    platform: Platform, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    queued = await run_cli(platform.env, "job", "queue", "--command",
                           f"while [ ! -e {go} ]; do sleep 0.05; done; echo traced")
    assert queued.code == 0, queued.stderr
    job = queued.stdout.strip()
    log_subjects = subjects.job_log_subjects(DEFAULT_NAMESPACE, job)

    # The recipe: the job's events and its log, live; another job's never show.
    follow = subjects.job_events_of(job)
    watch = await asyncio.create_subprocess_exec(
        HODEI, "debug", "sub", follow, log_subjects,
        env=platform.env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert watch.stdout is not None
        assert watch.stderr is not None
        said = await asyncio.wait_for(watch.stderr.readline(), 30)
        assert said.decode() == f"Subscribing on {follow}, {log_subjects}\n"
        other = await run_cli(platform.env, "job", "run", "--command", "echo other")
        assert other.code == 0, other.stderr
        go.touch()
        end = subjects.platform_logs(DEFAULT_NAMESPACE, job)
        succeeded = subjects.job_event(job, subjects.JOB_SUCCEEDED)
        out = await read_until(watch.stdout, f'"{succeeded}"', f'"{end}"', '"traced"')
        watch.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(watch.communicate(), 30)
    finally:
        if watch.returncode is None:
            watch.kill()
            await watch.wait()
    assert watch.returncode == 0
    seen = received(out + rest.decode())
    assert all(s.startswith((f"logs.{DEFAULT_NAMESPACE}.{job}.", f"job.{job}."))
               for s in seen), seen
    assert f'"job_id": "{job}"' in out
    assert '"other"' not in out

    # Its events so far, replayed from the stream, in order.
    events = await run_cli(platform.env, "debug", "sub", "--stream",
                           subjects.JOB_EVENTS_STREAM, follow)
    assert events.code == 0, events.stderr
    assert received(events.stdout) == [subjects.job_event(job, event) for event in (
        subjects.JOB_CREATED, subjects.JOB_ASSIGNED, subjects.JOB_ACCEPTED,
        subjects.JOB_STARTED, subjects.JOB_SUCCEEDED)]
    assert "Hodei-Event-Type: JobSucceeded" in events.stdout
    assert "traceparent: 00-" in events.stdout

    # Its worker's reports.
    worker = json.loads((await run_cli(platform.env, "job", "get", job, "-o",
                                       "json")).stdout)["worker_id"]
    reports = await run_cli(platform.env, "debug", "sub", "--stream",
                            subjects.WORKER_STATUS_STREAM, subjects.worker_status(worker))
    assert reports.code == 0, reports.stderr
    assert set(received(reports.stdout)) == {subjects.worker_status(worker)}
    assert '"kind": "finished"' in reports.stdout
    assert '"outcome": "succeeded"' in reports.stdout
