"""The local provider on its own: it kills only its own worker's agent, and a dead one is no
error."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from hodei_common.contracts.workers import WorkerMode
from hodei_common.testing import assert_eventually
from hodei_provisioner.providers import WorkerSpec
from hodei_provisioner.providers.local import LocalProvider
from tests.provisioner.helpers import is_alive

SLEEPER = [sys.executable, "-c",
           "import signal, sys, time\n"
           "if 'ignore-term' in sys.argv: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
           "print('ready', flush=True)\n"
           "time.sleep(60)\n"]


def _spec(worker_id: UUID | None = None) -> WorkerSpec:
    return WorkerSpec(worker_id=worker_id or uuid4(), token="secret-token",
                      nats_url="nats://127.0.0.1:1", mode=WorkerMode.EPHEMERAL, provider="local")


def _provider(tmp_path: Path, *extra: str) -> LocalProvider:
    return LocalProvider([*SLEEPER, *extra], tmp_path / "workers", grace_s=0.5)


@pytest.fixture
async def stranger() -> AsyncIterator[asyncio.subprocess.Process]:
    """A process this provider did not start."""
    proc = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_destroying_an_agent_that_already_exited_succeeds(tmp_path: Path) -> None:
    provider = LocalProvider([sys.executable, "-c", "pass"], tmp_path / "workers")
    spec = _spec()
    pid = int(await provider.create(spec))
    await assert_eventually(lambda: provider.children() == {})  # reaped: no zombie
    assert not is_alive(pid)
    await provider.destroy(str(pid), worker_id=spec.worker_id)
    await provider.destroy(str(pid), worker_id=spec.worker_id)
    assert not await provider.exists(str(pid), worker_id=spec.worker_id)


async def test_a_pid_that_is_not_ours_is_never_killed(
    tmp_path: Path, stranger: asyncio.subprocess.Process,
) -> None:
    provider = _provider(tmp_path)
    await provider.destroy(str(stranger.pid), worker_id=uuid4())
    assert not await provider.exists(str(stranger.pid), worker_id=uuid4())
    assert is_alive(stranger.pid)
    assert stranger.returncode is None


async def test_an_agent_is_killed_only_for_its_own_worker(tmp_path: Path) -> None:
    provider = _provider(tmp_path)
    spec = _spec()
    resource_id = await provider.create(spec)
    try:
        await provider.destroy(resource_id, worker_id=uuid4())
        assert is_alive(int(resource_id))
        assert await provider.exists(resource_id, worker_id=spec.worker_id)
        await provider.destroy(resource_id, worker_id=spec.worker_id)
        assert not is_alive(int(resource_id))
        assert not await provider.exists(resource_id, worker_id=spec.worker_id)
        assert provider.children() == {}
    finally:
        await provider.destroy(resource_id, worker_id=spec.worker_id)


async def test_an_agent_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    provider = _provider(tmp_path, "ignore-term")
    spec = _spec()
    resource_id = await provider.create(spec)
    log = provider.log_path(spec.worker_id)
    await assert_eventually(lambda: "ready" in log.read_text())
    await provider.destroy(resource_id, worker_id=spec.worker_id)
    assert not is_alive(int(resource_id))
    assert provider.children() == {}


async def test_an_agent_from_an_earlier_run_is_found_by_its_worker_id(tmp_path: Path) -> None:
    worker_id = uuid4()
    # Not our child: started the way an earlier provisioner run would have started it.
    orphan = await asyncio.create_subprocess_exec(
        "sleep", "60", env={**os.environ, "HODEI_WORKER_ID": str(worker_id)},
        start_new_session=True)
    try:
        provider = _provider(tmp_path)
        assert not await provider.exists(str(orphan.pid), worker_id=uuid4())
        assert await provider.exists(str(orphan.pid), worker_id=worker_id)
        await provider.destroy(str(orphan.pid), worker_id=worker_id)
        assert await asyncio.wait_for(orphan.wait(), 5) == -15
    finally:
        if orphan.returncode is None:
            orphan.kill()
        await orphan.wait()


async def test_closing_the_provider_leaves_agents_running(tmp_path: Path) -> None:
    provider = _provider(tmp_path)
    spec = _spec()
    pid = int(await provider.create(spec))
    await provider.close()
    assert is_alive(pid)
    # A later run finds it by its worker id and stops it.
    await _provider(tmp_path).destroy(str(pid), worker_id=spec.worker_id)
    await assert_eventually(lambda: not is_alive(pid))  # its exit may still be under way
    assert os.waitpid(pid, os.WNOHANG)[0] == pid  # noqa: ASYNC222 - a zombie: no wait


async def test_the_agent_gets_a_minimal_environment_and_its_output_goes_to_its_log(
    tmp_path: Path,
) -> None:
    provider = LocalProvider(
        [sys.executable, "-c",
         "import sys\n"  # /proc shows the environment as given, before Python adds to it
         "env = open('/proc/self/environ', 'rb').read().split(b'\\0')\n"
         "print(sorted(e.split(b'=')[0].decode() for e in env if e), flush=True)\n"
         "print('oops', file=sys.stderr)\n"],
        tmp_path / "workers", env={"PATH": os.environ["PATH"]})
    spec = _spec()
    await provider.create(spec)
    await assert_eventually(lambda: provider.children() == {})
    lines = provider.log_path(spec.worker_id).read_text().splitlines()
    assert lines[0] == str(["HODEI_BOOTSTRAP_TOKEN", "HODEI_NATS_URL", "HODEI_WORKER_ID",
                            "PATH"])
    assert lines[1] == "oops"
    assert oct(provider.log_path(spec.worker_id).stat().st_mode & 0o777) == "0o600"
