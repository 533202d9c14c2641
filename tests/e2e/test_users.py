"""Users of the secured embedded platform: `hodei auth create-user` makes credentials for one
namespace, and NATS itself keeps each user to its own namespace's jobs."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from pathlib import Path

import msgspec
import nats
import pytest
from nats.errors import Error as NatsError

from hodei_cli.embedded import AUTH_DIR
from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.logs import LogBatch, LogEnd, LogLine, LogStream
from hodei_common.natsauth import Trust, jwt, permissions
from tests.cli.conftest import CliResult, run_cli
from tests.e2e.conftest import Platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def hodei(platform: Platform, creds: Path | None, *args: str,
                **env: str) -> CliResult:
    """The CLI acting with ``creds`` (the platform's own, an admin's, when None)."""
    options = ["--creds", str(creds)] if creds is not None else []
    return await run_cli({**platform.env, **env}, *options, *args)


async def create_user(platform: Platform, where: Path, name: str, namespace: str,
                      *flags: str) -> Path:
    path = where / f"{name}.creds"
    made = await hodei(platform, None, "auth", "create-user", name, "--namespace", namespace,
                       "--output", str(path), *flags)
    assert made.code == 0, made.stderr
    return path


@pytest.fixture(scope="module")
def users(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("users")

    async def make() -> dict[str, Path]:
        return {
            "alice": await create_user(platform, where, "alice", "team-a"),
            "bob": await create_user(platform, where, "bob", "team-b"),
            "ops": await create_user(platform, where, "ops", "ops", "--admin"),
        }

    return asyncio.run(make())


async def test_a_user_s_creds_file_is_its_own_and_names_its_namespace(
    platform: Platform, users: dict[str, Path],
) -> None:
    path = users["alice"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    claims = jwt.decode(jwt.creds_user_jwt(path.read_text()))
    assert claims["name"] == subjects.user_identity("team-a", "alice")
    assert claims["nats"]["tags"] == ["hodei-namespace:team-a"]
    assert claims["nats"]["pub"]["allow"][0] == "hodei.api.team-a.>"
    assert "hodei-admin" in jwt.decode(jwt.creds_user_jwt(users["ops"].read_text()))[
        "nats"]["tags"]


@pytest.mark.parametrize(("args", "wanted"), [
    (("Alice", "--namespace", "team-a"), "error: user name 'Alice' is not valid: a user "
                                          "name is 1 to 63 lower-case letters"),
    (("carol", "--namespace", "team_a"), "error: namespace 'team_a' is not valid"),
])
async def test_a_bad_name_or_namespace_is_one_line_and_writes_nothing(
    platform: Platform, tmp_path: Path, args: tuple[str, ...], wanted: str,
) -> None:
    out = tmp_path / "user.creds"
    made = await hodei(platform, None, "auth", "create-user", *args, "--output", str(out))
    assert made.code == 1
    assert made.stderr.startswith(wanted), made.stderr
    assert made.stderr.count("\n") == 1
    assert not out.exists()


async def test_an_existing_creds_file_is_not_overwritten(
    platform: Platform, users: dict[str, Path],
) -> None:
    before = users["bob"].read_text()
    made = await hodei(platform, None, "auth", "create-user", "bob", "--namespace", "team-b",
                       "--output", str(users["bob"]))
    assert (made.code, made.stderr) == (
        1, f"error: {users['bob']} exists; remove it or choose another --output\n")
    assert users["bob"].read_text() == before


async def test_another_namespace_s_job_is_not_found_and_stays_untouched(
    platform: Platform, users: dict[str, Path],
) -> None:
    alice, bob = users["alice"], users["bob"]
    queued = await hodei(platform, alice, "job", "queue", "--command", "sleep 3; echo done")
    assert queued.code == 0, queued.stderr
    job_id = queued.stdout.strip()
    unknown = str(uuid.uuid4())
    for verb in ("get", "cancel", "events", "explain", "logs"):
        theirs = await hodei(platform, bob, "job", verb, job_id)
        nobody_s = await hodei(platform, bob, "job", verb, unknown)
        assert (theirs.code, theirs.stderr) == (
            nobody_s.code, nobody_s.stderr.replace(unknown, job_id)), verb
        assert theirs.stderr == f"error: job {job_id} not found\n", verb
    listed = await hodei(platform, bob, "job", "list", "-o", "json")
    assert job_id not in listed.stdout
    # Naming the other namespace is refused before anything is sent.
    other = await hodei(platform, bob, "job", "list", HODEI_NAMESPACE="team-a")
    assert (other.code, other.stderr) == (
        1, "error: your credentials are for namespace 'team-b'; they cannot act in "
           "'team-a'\n")
    # Alice's job ran to its end all the same, and she reads its log.
    ran = await hodei(platform, alice, "job", "logs", job_id, "--follow")
    assert ran.stdout == "done\n"
    got = await hodei(platform, alice, "job", "get", job_id, "-o", "json")
    assert json.loads(got.stdout)["state"] == "SUCCEEDED"
    # An admin sees every namespace's jobs.
    seen = await hodei(platform, users["ops"], "job", "list", "-o", "json",
                       HODEI_NAMESPACE="team-a")
    assert [j["id"] for j in json.loads(seen.stdout)] == [job_id]


async def test_workers_and_providers_are_for_admins(
    platform: Platform, users: dict[str, Path],
) -> None:
    refused = await hodei(platform, users["alice"], "provider", "list")
    assert (refused.code, refused.stderr) == (
        1, "error: workers and providers are for admins; these credentials are a user's of "
           "namespace 'team-a'\n")
    allowed = await hodei(platform, users["ops"], "provider", "list", "-o", "json")
    assert allowed.code == 0, allowed.stderr
    assert {p["name"] for p in json.loads(allowed.stdout)} >= {"local"}


async def test_nats_refuses_a_user_the_subjects_of_other_namespaces_and_admins(
    platform: Platform, users: dict[str, Path],
) -> None:
    """What the CLI checks first, the server enforces: a program using bob's credentials
    directly cannot reach team-a's jobs or the admin endpoints."""
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    nc = await nats.connect(
        platform.nats_url, user_credentials=str(users["bob"]), error_cb=on_error,
        inbox_prefix=subjects.inbox_prefix(subjects.user_identity("team-b", "bob")))
    try:
        own = await nc.request(subjects.api_ns("team-b", subjects.JOBS_LIST), b"{}", timeout=5)
        assert b"jobs" in own.data
        for subject in (subjects.api_ns("team-a", subjects.JOBS_LIST),
                        subjects.ADMIN_PROVIDERS_UPDATE,
                        subjects.job_event(uuid.uuid4(), subjects.JOB_CREATED)):
            with pytest.raises((NatsError, TimeoutError)):
                await nc.request(subject, b"{}", timeout=1)
            assert any(f'publish to "{subject}"' in str(e).lower().replace(
                subject.lower(), subject) for e in errors), (subject, errors)
        # Nor may it listen to what the platform says, of every job or of one.
        for subject in (subjects.JOB_EVENTS_SUBJECTS, subjects.job_events_of(uuid.uuid4())):
            await nc.subscribe(subject)
            await nc.flush()
            await asyncio.sleep(0.2)
            assert any(f'subscription to "{subject}"' in str(e).lower()
                       for e in errors), (subject, errors)
    finally:
        await nc.close()


async def test_a_reusable_agent_s_credentials_cannot_put_words_in_another_job_s_log(
    platform: Platform, users: dict[str, Path], tmp_path: Path,
) -> None:
    """What a hostile reusable worker's agent may do (write under its own worker id in any
    job's log: its jobs are not known when it registers) changes nothing another job's readers
    see, live, from the stream or from the archive."""
    intruder = uuid.uuid4()
    creds = Trust.load(platform.home / AUTH_DIR / "keys").user(
        permissions.agent(intruder)).write(tmp_path / "intruder.creds")
    queued = await hodei(platform, users["alice"], "job", "queue", "--command",
                         "echo begin; sleep 2; echo done")
    assert queued.code == 0, queued.stderr
    job_id = uuid.UUID(queued.stdout.strip())
    following = asyncio.create_task(
        hodei(platform, users["alice"], "job", "logs", str(job_id), "--follow"))
    nc = await nats.connect(platform.nats_url, user_credentials=str(creds),
                            inbox_prefix=subjects.inbox_prefix(subjects.agent_identity(intruder)))
    try:
        js = nc.jetstream()
        mine = subjects.job_logs("team-a", job_id, intruder)
        for attempt in (1, 2):
            await js.publish(mine, msgspec.json.encode(LogBatch(
                job_id=job_id, attempt=attempt,
                lines=[LogLine(seq, LogStream.STDOUT, 0.0, "forged") for seq in (1, 2, 3)])))
        await js.publish(mine, msgspec.json.encode(LogEnd(
            job_id=job_id, attempt=1, state=JobState.FAILED, exit_code=1, lines=3)))
        with pytest.raises((NatsError, TimeoutError)):  # the platform's subject is not its own
            await js.publish(subjects.platform_logs("team-a", job_id), b"{}", timeout=1)
    finally:
        await nc.close()
    followed = await asyncio.wait_for(following, 60)
    assert (followed.code, followed.stdout) == (0, "begin\ndone\n"), followed.stderr
    for _ in range(2):  # from the stream or the archive, whichever holds it by now
        read = await hodei(platform, users["alice"], "job", "logs", str(job_id))
        assert (read.code, read.stdout) == (0, "begin\ndone\n"), read.stderr
