"""Ctrl-C in the terminal running `hodei dev up`: SIGINT to its whole process group.

The embedded nats-server and PostgreSQL must outlive the drain, the running jobs end
CANCELLED, and no agent, container or server is left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest

from hodei_common.testing import assert_eventually
from hodei_common.testing.processes import agent_processes, running
from hodei_provisioner.providers.docker import LABEL_MANAGED, LABEL_PROVIDER_ID
from tests.cli.conftest import HODEI, run_cli
from tests.e2e.test_embedded_platform import children_of, kinds_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOB = "echo running; sleep 300"
STOP_BOUND_S = 30.0  # the drain grace (10 s) and then some: a bound, not a benchmark


class TerminalSession:
    """`hodei dev up` as a terminal runs it: the leader of a process group of its own."""

    def __init__(self, home: Path, extra_env: dict[str, str]) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
        self.env |= {"HODEI_HOME": str(home), **extra_env}
        self.log = home.parent / f"dev-up-{os.urandom(3).hex()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [HODEI, "dev", "up"], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

        def up() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()
            return (self.home / "dev.json").exists()

        await assert_eventually(up, within_s=60.0)

    async def ctrl_c(self) -> int:
        """SIGINT to the whole process group, as the terminal sends it; the exit code."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), STOP_BOUND_S)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def cli_json(self, *args: str) -> Any:
        result = await run_cli(self.env, *args, "-o", "json")
        assert result.code == 0, result.stderr
        return json.loads(result.stdout)


async def ctrl_c_while_jobs_run(
    scratch_dir: Path, providers: list[str], extra_env: dict[str, str] | None = None,
    engine: docker.DockerClient | None = None,
) -> None:
    home = scratch_dir / "home"
    platform = TerminalSession(home, extra_env or {})
    await platform.start()
    try:
        nats_url = json.loads((home / "dev.json").read_text())["nats_url"]
        servers = children_of(platform.proc.pid)  # type: ignore[union-attr]
        assert kinds_of(servers) == ["agent template", "nats-server", "postgres"]
        jobs = {}
        for provider in providers:
            queued = await run_cli(platform.env, "job", "queue", "--provider", provider,
                                   "--command", JOB)
            assert queued.code == 0, queued.stderr
            jobs[provider] = queued.stdout.strip()

        async def all_running() -> bool:
            for job_id in jobs.values():
                if (await platform.cli_json("job", "get", job_id))["state"] != "RUNNING":
                    return False
            return True

        await assert_eventually(all_running, within_s=60.0)
        workers = await platform.cli_json("worker", "list")
        local_agent = int(next(w["provider_resource_id"] for w in workers
                               if w["provider"] == "local" and w["state"] == "BUSY"))
        assert running(local_agent)
        scope = next(p["id"] for p in await platform.cli_json("provider", "list")
                     if p["name"] == "docker")
        labels = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_PROVIDER_ID}={scope}"]}
        if engine is not None:
            assert len(engine.api.containers(filters=labels)) == 1

        assert await platform.ctrl_c() == 0, platform.log.read_text()

        output = platform.log.read_text()
        assert "Traceback" not in output, output
        assert not running(local_agent)
        assert agent_processes(nats_url, templates=True) == []
        assert not [pid for pid in servers if running(pid)]
        if engine is not None:
            assert engine.api.containers(all=True, filters=labels) == []

        # The jobs' end was recorded before the platform stopped: ask the next one.
        again = TerminalSession(home, extra_env or {})
        await again.start()
        try:
            for job_id in jobs.values():
                job = await again.cli_json("job", "get", job_id)
                assert job["state"] == "CANCELLED", job
            assert await again.ctrl_c() == 0
        finally:
            again.kill()
    finally:
        platform.kill()


async def test_ctrl_c_on_dev_up_cancels_a_running_local_job_and_leaves_nothing_behind(
    scratch_dir: Path,
) -> None:
    await ctrl_c_while_jobs_run(scratch_dir, ["local"])


@pytest.mark.docker
async def test_ctrl_c_on_dev_up_cancels_local_and_docker_jobs_and_leaves_nothing_behind(
    scratch_dir: Path, worker_image: str, docker_engine: docker.DockerClient,
) -> None:
    await ctrl_c_while_jobs_run(
        scratch_dir, ["local", "docker"],
        {"HODEI_DOCKER_ENABLED": "1", "HODEI_WORKER_IMAGE": worker_image}, docker_engine)
