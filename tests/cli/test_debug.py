"""`hodei debug sub`: what NATS delivers to the CLI's credentials, printed as `nats sub` does."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_common import messaging
from hodei_common.contracts import subjects
from hodei_common.natsauth import Trust, permissions
from hodei_common.settings import Settings
from tests.cli.conftest import HODEI, run_cli

pytestmark = [pytest.mark.nats]

JOB = uuid4()
WORKER = uuid4()
# A job's events are on `job.<id>.<event>`, as a user types them.
CREATED, FAILED = f"job.{JOB}.created", f"job.{JOB}.failed"


@contextlib.asynccontextmanager
async def watching(env: dict[str, str], filters: list[str], *options: str
                   ) -> AsyncIterator[asyncio.subprocess.Process]:
    """`hodei debug sub FILTERS OPTIONS` running, once it said it subscribed."""
    proc = await asyncio.create_subprocess_exec(
        HODEI, "debug", "sub", *filters, *options, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        said = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert said.decode() == f"Subscribing on {', '.join(filters)}\n", said
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def blocks(out: str) -> list[str]:
    """Each printed message, its number taken off its first line."""
    return [b.split("] ", 1)[1] for b in out.split("\n\n[#")]


async def test_sub_prints_each_message_s_subject_headers_and_payload(
    cli_env: dict[str, str], nc: NATS
) -> None:
    async with watching(cli_env, ["job.*.*", "worker.*.status"], "--count", "3") as proc:
        created = {"job_id": str(JOB), "attempt": 1, "note": "caf\u00e9 \u009b2J"}
        await nc.publish(CREATED, msgspec.json.encode(created),
                         headers={"Hodei-Event-Type": "JobCreated", "Nats-Msg-Id": "m1"})
        await nc.publish(FAILED, b"\xff\xfe not utf-8")
        await nc.publish(f"worker.{WORKER}.status", b"plain \x1b[2J text\nsecond line")
        out, err = await asyncio.wait_for(proc.communicate(), 30)

    assert proc.returncode == 0, err
    text = out.decode()
    assert text.endswith("\n\n")
    # Each subject's messages come in order; two subjects' as their subscriptions hand them.
    assert sorted(line.split("]")[0] for line in received(text)) == ["[#1", "[#2", "[#3"]
    assert sorted(blocks(text.removesuffix("\n\n"))) == sorted([
        f'Received on "{CREATED}"\n'
        "Hodei-Event-Type: JobCreated\n"
        "Nats-Msg-Id: m1\n"
        "\n"
        "{\n"
        f'  "job_id": "{JOB}",\n'
        '  "attempt": 1,\n'
        '  "note": "caf\u00e9 \\u009b2J"\n'
        "}",
        f'Received on "{FAILED}"\n'
        "\n"
        "\\xff\\xfe not utf-8",
        f'Received on "worker.{WORKER}.status"\n'
        "\n"
        "plain \\x1b[2J text\nsecond line",
    ])


async def job_events(js: JetStreamContext) -> list[dict[str, object]]:
    """Three events in JOB_EVENTS, the second of another job, as the relay stores them."""
    other = uuid4()
    events: list[dict[str, object]] = [
        {"job_id": str(JOB), "attempt": 1, "kind": "created"},
        {"job_id": str(other), "attempt": 1, "kind": "created"},
        {"job_id": str(JOB), "attempt": 1, "kind": "failed"},
    ]
    for event, subject in zip(events, (CREATED, f"job.{other}.created", FAILED), strict=True):
        await js.publish(subject, msgspec.json.encode(event))
    return events


def received(out: str) -> list[str]:
    """The first line of each printed message."""
    return [line for line in out.splitlines() if line.startswith("[#")]


async def test_stream_replays_what_is_stored_from_the_first_then_stops(
    cli_env: dict[str, str], js: JetStreamContext, settings: Settings
) -> None:
    other = (await job_events(js))[1]["job_id"]
    stream = subjects.JOB_EVENTS_STREAM

    whole = await run_cli(cli_env, "debug", "sub", "--stream", stream)
    assert whole.code == 0, whole.stderr
    heads = received(whole.stdout)
    assert [h.split(" (")[0] for h in heads] == [
        f'[#1] Received on "{CREATED}"', f'[#2] Received on "job.{other}.created"',
        f'[#3] Received on "{FAILED}"']
    assert [h.split(" (")[1].split(",")[0] for h in heads] == [
        f"{stream} #1", f"{stream} #2", f"{stream} #3"]
    assert '"kind": "failed"' in whole.stdout

    filtered = await run_cli(cli_env, "debug", "sub", "--stream", stream, "job.*.failed")
    assert [h.split(" (")[0] for h in received(filtered.stdout)] == [
        f'[#1] Received on "{FAILED}"']
    followed = await run_cli(cli_env, "debug", "sub", "--stream", stream, f"job.{JOB}.>")
    assert [h.split(" (")[0] for h in received(followed.stdout)] == [
        f'[#1] Received on "{CREATED}"', f'[#2] Received on "{FAILED}"']
    one_job = await run_cli(cli_env, "debug", "sub", "--stream", stream, "--job", str(JOB))
    assert f"{stream} #2" not in one_job.stdout
    assert len(received(one_job.stdout)) == 2
    counted = await run_cli(cli_env, "debug", "sub", "--stream", stream, "--count", "1")
    assert len(received(counted.stdout)) == 1
    nothing = await run_cli(cli_env, "debug", "sub", "--stream", stream, "job.*.timed_out")
    assert (nothing.code, nothing.stdout) == (0, "")
    # Every reader deleted its consumer.
    assert (await js.stream_info(stream)).state.consumer_count == 0
    # The stream's info is the admin's to read too (`nats stream view` asks for it).
    admin = await messaging.connect(settings, name=permissions.CLI_IDENTITY, initial_attempts=1)
    try:
        info = await admin.jetstream(timeout=5).stream_info(stream)
        assert info.state.messages == 3
    finally:
        await admin.close()


async def test_one_jobs_subscription_prints_that_jobs_events_and_no_other(
    cli_env: dict[str, str], nc: NATS
) -> None:
    async with watching(cli_env, [f"job.{JOB}.>"], "--count", "2") as proc:
        await nc.publish(f"job.{uuid4()}.created", b'{"other": true}')
        await nc.publish(CREATED, b'{"kind": "created"}')
        await nc.publish(FAILED, b'{"kind": "failed"}')
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert received(out.decode()) == [f'[#1] Received on "{CREATED}"',
                                      f'[#2] Received on "{FAILED}"']


async def test_ctrl_c_ends_a_watch_quietly(cli_env: dict[str, str]) -> None:
    async with watching(cli_env, ["job.*.*"]) as proc:
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert (proc.returncode, out, err) == (0, b"", b"")


@pytest.fixture
def user_env(cli_env: dict[str, str], nats_trust: Trust, tmp_path: Path) -> dict[str, str]:
    """The CLI acting with the creds of a user of namespace team-a."""
    creds = tmp_path / "ann.creds"
    nats_trust.user(permissions.user("ann", "team-a")).write(creds)
    return {**cli_env, "HODEI_CREDS": str(creds)}


async def test_a_user_watches_its_namespace_s_logs_and_is_refused_events_in_one_line(
    user_env: dict[str, str], cli_env: dict[str, str], js: JetStreamContext
) -> None:
    await job_events(js)
    own_logs = "logs.team-a.>"
    async with watching(user_env, [own_logs], "--count", "1") as proc:
        await js.publish(subjects.platform_logs("team-a", JOB), b'{"end": true}')
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert received(out.decode()) == [f'[#1] Received on "logs.team-a.{JOB}.hodei"']

    for args, line in (
        (["job.*.*"], "these credentials may not subscribe to job.*.*"),
        ([f"job.{JOB}.>"], f"these credentials may not subscribe to job.{JOB}.>"),
        (["logs.team-b.>"], "these credentials may not subscribe to logs.team-b.>"),
        (["--stream", "JOB_EVENTS"], "these credentials may not read stream JOB_EVENTS"),
    ):
        refused = await run_cli(user_env, "debug", "sub", *args)
        assert refused.code == 1, args
        assert refused.stderr.startswith(f"error: {line}; "), refused.stderr
        assert len(refused.stderr.splitlines()) == 1
        assert refused.stdout == ""

    # Assignments carry env values: not even an admin's CLI may watch them.
    assign = subjects.worker_assign("*")
    refused = await run_cli(cli_env, "debug", "sub", assign)
    assert refused.stderr.startswith(f"error: these credentials may not subscribe to {assign}")
    refused = await run_cli(cli_env, "debug", "sub", "--stream", subjects.WORKER_ASSIGN_STREAM)
    assert refused.stderr.startswith("error: these credentials may not read stream "
                                     f"{subjects.WORKER_ASSIGN_STREAM}")


@pytest.mark.parametrize(("args", "line"), [
    ([], "error: give at least one SUBJECT to watch, or --stream NAME"),
    (["job..x"], "error: 'job..x' is not a NATS subject"),
    (["job.>.x"], "error: 'job.>.x' is not a NATS subject"),
    (["job.*.*", "--job", "nope"], "error: --job must be a job id (a UUID), got 'nope'"),
    (["job.*.*", "--count", "0"], "error: Invalid value for '--count'"),
])
async def test_bad_input_is_one_error_line(
    cli_env: dict[str, str], args: list[str], line: str
) -> None:
    result = await run_cli(cli_env, "debug", "sub", *args)
    assert result.code != 0
    assert result.stderr.startswith(line), result.stderr
    assert len(result.stderr.splitlines()) == 1
