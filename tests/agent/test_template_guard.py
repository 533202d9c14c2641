"""Agents forked from the agent template start their jobs' shells directly: the template,
a child subreaper, is their guard. An agent killed -9 takes its whole running job with it;
what belongs to a live agent's job is spared when another agent ends."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hodei_agent.process import group_alive, proc_stat
from hodei_common.contracts.agent import StatusKind
from hodei_common.testing import assert_eventually
from hodei_common.testing.processes import running
from hodei_provisioner.providers.agent_template import AgentTemplate
from tests.agent.harness import Platform


def _parent(pid: int) -> int | None:
    ids = proc_stat(pid)
    return None if ids is None else ids[1]


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.fixture
async def template(tmp_path: Path) -> AsyncIterator[tuple[AgentTemplate, dict[int, int]]]:
    """A template, as the local provider runs it, and the exit codes it told."""
    exited: dict[int, int] = {}
    template = AgentTemplate(
        [sys.executable, "-m", "hodei_agent.template"], {"PATH": os.environ["PATH"]},
        tmp_path / "agent-template.log", on_spawned=lambda pid, worker: None,
        on_exited=exited.__setitem__, on_gone=lambda: None)
    await template.start()
    try:
        yield template, exited
    finally:
        await template.close()


async def _lines(platform: Platform, job: object, count: int) -> list[int]:
    async def enough() -> list[str] | None:
        texts = platform.texts(job)  # type: ignore[arg-type]
        return texts if len(texts) >= count else None
    return [int(t) for t in (await assert_eventually(enough))[:count]]


async def test_a_forked_agent_killed_9_takes_its_whole_job_and_another_agents_end_spares_it(
    platform: Platform, template: tuple[AgentTemplate, dict[int, int]], tmp_path: Path,
) -> None:
    guard, exited = template
    assert guard.pid is not None
    agent = await guard.spawn(platform.agent_env(), tmp_path / "agent.log", platform.worker_id)
    # A background sleep in the job's group, and one orphaned (its subshell ended) to the
    # template while the job runs on.
    job = await platform.assign("sleep 60 & echo $!; (sleep 60 & echo $!); echo $$; sleep 60")
    await platform.reached(job, StatusKind.STARTED)
    background, orphan, shell = await _lines(platform, job, 3)
    assert _parent(shell) == agent  # the agent's own child
    await assert_eventually(lambda: _parent(orphan) == guard.pid)

    # Another agent ends (a bad setting): the live job, its orphan included, is spared.
    failing = await guard.spawn({**platform.agent_env(), "HODEI_LOG_FORMAT": "bogus"},
                                tmp_path / "failing.log", platform.worker_id)
    await assert_eventually(lambda: exited.get(failing) == 1, within_s=10)
    await asyncio.sleep(0.2)
    assert all(running(pid) for pid in (shell, background, orphan))

    # Its agent killed -9: the whole job ends with it, and nothing is left unreaped.
    os.kill(agent, signal.SIGKILL)
    await assert_eventually(lambda: exited.get(agent) == -signal.SIGKILL, within_s=5)
    await assert_eventually(lambda: not group_alive(shell) and not running(orphan),
                            within_s=5, message="the job outlived its agent")
    await assert_eventually(lambda: _children(guard.pid) == [], within_s=5,
                            message="the template left processes unreaped")
