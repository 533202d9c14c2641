"""A job kept from the agent's powers: its environment, its own user, the agent's checks."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hodei_agent.config import AgentSettings
from hodei_agent.jobuser import JobUser, check_can_switch
from hodei_agent.process import job_environment
from hodei_common.contracts.agent import Outcome
from hodei_common.errors import ConfigError
from hodei_common.testing import assert_eventually
from tests.agent.harness import TOKEN, Platform

AGENT_ENV = {
    "PATH": "/opt/hodei/bin:/usr/bin:/bin",
    "HOME": "/root",
    "USER": "root",
    "HODEI_NATS_URL": "nats://platform:4222",
    "HODEI_WORKER_ID": "0b7f3c52-0000-4000-8000-000000000000",
    "HODEI_BOOTSTRAP_TOKEN": TOKEN,
    "HODEI_NATS_PASSWORD": "secret",
    "HODEI_AGENT_JOB_USER": "10001:10001",
    "OTEL_EXPORTER_OTLP_HEADERS": "authorization=secret",
    "PYTHONSAFEPATH": "1",
}


def test_the_job_environment_holds_no_variable_of_the_agent_but_the_basics() -> None:
    env = job_environment({"MY_VAR": "1"}, Path("/tmp/job-1"), AGENT_ENV)
    assert not [key for key in env if key.startswith("HODEI_")]
    assert TOKEN not in env.values()
    assert env == {"PATH": AGENT_ENV["PATH"], "HOME": "/root", "USER": "root",
                   "LANG": "C.UTF-8", "PWD": "/tmp/job-1", "MY_VAR": "1"}


def test_a_job_user_gets_its_own_home_and_name_not_the_agents() -> None:
    entry = pwd.getpwuid(os.getuid())
    env = job_environment({}, Path("/tmp/job-1"), AGENT_ENV, JobUser(entry.pw_uid, 0))
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (entry.pw_dir, entry.pw_name,
                                                          entry.pw_name)
    assert not [key for key in env if key.startswith("HODEI_")]


def test_a_job_user_without_a_passwd_entry_has_its_working_directory_as_home() -> None:
    env = job_environment({}, Path("/tmp/job-1"), AGENT_ENV, JobUser(2**31 - 3, 2**31 - 3))
    assert env["HOME"] == "/tmp/job-1"
    assert "USER" not in env


@pytest.mark.parametrize(("spec", "user"), [
    ("10001:10001", JobUser(10001, 10001)), ("10001", JobUser(10001, 10001)),
    ("10001:20", JobUser(10001, 20)),
])
def test_the_job_user_setting_is_uid_then_optional_gid(spec: str, user: JobUser,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HODEI_AGENT_JOB_USER", spec)
    settings = AgentSettings.from_env(nats_url="nats://x", worker_id=AGENT_ENV[
        "HODEI_WORKER_ID"], bootstrap_token=TOKEN)
    assert settings.job_user() == user


@pytest.mark.parametrize("spec", ["hodei", "10001:", "-1", "10001:10001:1"])
def test_a_job_user_setting_that_is_not_numeric_is_refused(
    spec: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HODEI_AGENT_JOB_USER", spec)
    with pytest.raises(ConfigError, match="HODEI_AGENT_JOB_USER"):
        AgentSettings.from_env(nats_url="nats://x", worker_id=AGENT_ENV[
            "HODEI_WORKER_ID"], bootstrap_token=TOKEN)


def test_an_agent_running_as_the_job_user_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="runs as the job user"):
        check_can_switch(JobUser(os.geteuid(), os.getegid()))


def test_an_agent_without_its_capabilities_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCapEff:\t00000000000000c0\n")  # SETUID, SETGID only
    monkeypatch.setattr("hodei_agent.jobuser.STATUS", status)
    with pytest.raises(ConfigError, match="lacks the capabilities CHOWN, DAC_OVERRIDE, KILL "):
        check_can_switch(JobUser(os.geteuid() + 1, os.getegid() + 1))


# --- a real agent, as root, running its job as nobody ---------------------------------------
NOBODY = 65534
ATTACK = (
    "id -u; id -G; test -w . && echo workdir-writable; "
    "mkdir -p private/deeper && chmod 500 private && echo made-private; "
    "cat /proc/$PPID/environ >/dev/null 2>&1 && echo READ-AGENT-ENV || echo environ-refused; "
    "kill -TERM $PPID 2>/dev/null && echo SIGNALLED-AGENT || echo kill-refused; "
    "env | grep ^HODEI_ || echo no-hodei-env"
)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="starting a job as another user needs root and setpriv")


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A base for working directories that another user can reach (tmp_path cannot be)."""
    base = Path(tempfile.mkdtemp(prefix="hodei-jobuser-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@needs_root
@pytest.mark.nats
async def test_a_job_run_as_another_user_cannot_read_or_signal_its_agent(
    platform: Platform, shared_base: Path,
) -> None:
    agent = await platform.start_agent(HODEI_AGENT_JOB_USER=f"{NOBODY}:{NOBODY}",
                                       HODEI_WORKER_WORKDIR=str(shared_base))
    job = await platform.assign(ATTACK)
    finished = await platform.finished(job)
    assert finished.outcome is Outcome.SUCCEEDED, platform.texts(job)
    assert platform.texts(job) == [
        str(NOBODY), str(NOBODY), "workdir-writable", "made-private", "environ-refused",
        "kill-refused", "no-hodei-env"]
    assert agent.proc.returncode is None or await agent.exit_code() == 0
    # Removed whatever modes the job left in it (just after the report: the job was over).
    await assert_eventually(lambda: list(shared_base.iterdir()) == [])
