"""The local provider's agent template: agents forked from one process that imported the
agent, told apart, stopped and reaped as spawned ones are, and spawned again without it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from hodei_common.contracts.workers import WorkerMode
from hodei_common.embedded.process import free_port
from hodei_common.testing import assert_eventually
from hodei_provisioner.providers import News, Verdict, WorkerSpec
from hodei_provisioner.providers.local import LocalProvider
from tests.provisioner.helpers import is_alive

AGENT = [sys.executable, "-m", "hodei_agent"]


def _spec(nats_url: str = "nats://127.0.0.1:1") -> WorkerSpec:
    return WorkerSpec(worker_id=uuid4(), token="secret-token", nats_url=nats_url,
                      mode=WorkerMode.EPHEMERAL, provider="local")


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.fixture
async def news() -> list[News]:
    return []


@pytest.fixture
async def provider(tmp_path: Path, news: list[News]) -> AsyncIterator[LocalProvider]:
    provider = LocalProvider(AGENT, tmp_path / "workers", env={"PATH": os.environ["PATH"]},
                             grace_s=2.0)
    provider.on_news(news.append)
    await provider.start()
    try:
        yield provider
    finally:
        for pid, worker_id in provider.children().items():
            await provider.destroy(str(pid), worker_id=worker_id)
        await provider.close()


def _exit_code(news: list[News], worker_id: UUID) -> int | None:
    """The exit code the provider told for the worker's agent; None: no exit told yet."""
    return next((n.exit_code for n in news
                 if n.worker_id == worker_id and n.verdict is Verdict.ENDED), None)


async def test_an_agent_is_forked_from_the_template_with_its_own_environment(
    provider: LocalProvider, news: list[News],
) -> None:
    port = free_port()  # nobody listens: the agent keeps trying, naming the URL it was given
    spec = _spec(f"nats://127.0.0.1:{port}")
    pid = int(await provider.create(spec))
    template = provider.template_pid()
    assert template is not None
    assert _ppid(pid) == template
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3] == [
        sys.executable.encode(), b"-m", b"hodei_agent.template"]
    log = provider.log_path(spec.worker_id)
    await assert_eventually(lambda: f"127.0.0.1:{port}" in log.read_text(), within_s=10)
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    # Its own session and process group, as a spawned agent's.
    assert os.getsid(pid) == pid
    assert os.getpgid(pid) == pid
    assert provider.children() == {pid: spec.worker_id}
    # Stopped through the template, and its exit (0: a clean stop) told as a spawned one's.
    await provider.destroy(str(pid), worker_id=spec.worker_id)
    assert not is_alive(pid)
    assert _exit_code(news, spec.worker_id) == 0
    assert provider.children() == {}
    assert not (log.parent / f"{spec.worker_id}.pid").exists()
    # The secret travelled over the template's socket, never on a command line or in its log.
    assert "secret-token" not in (log.parent / "agent-template.log").read_text()


async def test_a_forked_agent_that_fails_is_reaped_and_its_code_told(
    tmp_path: Path, news: list[News],
) -> None:
    # The template only imports, so a setting only the agent reads fails in the agent alone.
    provider = LocalProvider(AGENT, tmp_path / "workers",
                             env={"PATH": os.environ["PATH"], "HODEI_LOG_FORMAT": "bogus"})
    provider.on_news(news.append)
    await provider.start()
    try:
        spec = _spec()
        pid = int(await provider.create(spec))
        await assert_eventually(lambda: _exit_code(news, spec.worker_id) is not None,
                                within_s=10)
        assert _exit_code(news, spec.worker_id) == 1
        assert "HODEI_LOG_FORMAT" in provider.log_path(spec.worker_id).read_text()
        assert not is_alive(pid)  # reaped by the template: no zombie left
        assert provider.template_pid() is not None  # the template lives on
    finally:
        await provider.close()


async def test_a_later_run_knows_a_forked_agent_by_its_pid_and_start_time(
    tmp_path: Path, provider: LocalProvider,
) -> None:
    spec = _spec()
    pid = int(await provider.create(spec))
    template = provider.template_pid()
    assert template is not None
    await provider.close()  # its agent runs on, and the template stays as its guard
    await asyncio.sleep(0.5)
    assert is_alive(pid)
    assert is_alive(template)
    later = LocalProvider(AGENT, tmp_path / "workers", template=False)
    assert await later.exists(str(pid), worker_id=spec.worker_id)
    assert not await later.exists(str(pid), worker_id=uuid4())
    # A pid file whose start time is not the process's names another process: left alone.
    pid_file = tmp_path / "workers" / f"{spec.worker_id}.pid"
    recorded = pid_file.read_text()
    pid_file.write_text(f"{pid} 1\n")
    assert not await later.exists(str(pid), worker_id=spec.worker_id)
    await later.destroy(str(pid), worker_id=spec.worker_id)
    assert is_alive(pid)
    pid_file.write_text(recorded)
    await later.destroy(str(pid), worker_id=spec.worker_id)
    await assert_eventually(lambda: not is_alive(pid))
    # Its last agent gone, the template ends (and is reaped: no zombie left).
    await assert_eventually(lambda: not Path(f"/proc/{template}").exists())


async def test_without_its_template_agents_are_spawned_and_forked_ones_still_stopped(
    provider: LocalProvider, news: list[News],
) -> None:
    forked = _spec()
    forked_pid = int(await provider.create(forked))
    template = provider.template_pid()
    assert template is not None
    os.kill(template, signal.SIGKILL)
    await assert_eventually(lambda: provider.template_pid() is None)
    # The forked agent is no child now (nobody tells its exit) but is still known as the
    # worker's agent.
    assert is_alive(forked_pid)
    assert provider.children() == {}
    assert await provider.exists(str(forked_pid), worker_id=forked.worker_id)
    spawned = _spec()
    spawned_pid = int(await provider.create(spawned))
    assert _ppid(spawned_pid) == os.getpid()  # spawned by the provider itself
    assert provider.children() == {spawned_pid: spawned.worker_id}
    await provider.destroy(str(forked_pid), worker_id=forked.worker_id)
    await provider.destroy(str(spawned_pid), worker_id=spawned.worker_id)
    await assert_eventually(lambda: not is_alive(forked_pid))
    assert not is_alive(spawned_pid)
    assert _exit_code(news, spawned.worker_id) == 0


async def test_other_agent_commands_are_spawned_as_they_are(tmp_path: Path) -> None:
    provider = LocalProvider([sys.executable, "-c", "import time; time.sleep(30)"],
                             tmp_path / "workers")
    await provider.start()
    try:
        spec = _spec()
        pid = int(await provider.create(spec))
        assert provider.template_pid() is None
        assert _ppid(pid) == os.getpid()
        await provider.destroy(str(pid), worker_id=spec.worker_id)
        await asyncio.sleep(0)
        assert not is_alive(pid)
    finally:
        await provider.close()
