"""The platform's services running in the test's loop, and the real `hodei` binary to drive them."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hodei_cli.services import SERVICES
from hodei_common.runner import HodeiService
from hodei_common.settings import Settings
from hodei_common.testing.services import running

HODEI = str(Path(sys.executable).with_name("hodei"))


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
async def platform(settings: Settings) -> AsyncIterator[list[HodeiService]]:
    """The intake side of the platform (api and relay): jobs are accepted and stay QUEUED,
    so the CLI's view of them holds still while a test looks."""
    services = [SERVICES[name](settings) for name in ("api", "relay")]
    async with running(services):
        yield services


@pytest.fixture
def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env["HODEI_NATS_URL"] = settings.resolved_nats_url()
    env["HODEI_DATABASE_URL"] = settings.resolved_database_url()
    env["HODEI_HOME"] = str(settings.home)
    return env


async def run_cli(env: dict[str, str], *args: str, timeout_s: float = 60.0) -> CliResult:
    """Run the real `hodei` command without blocking the services in this loop."""
    proc = await asyncio.create_subprocess_exec(
        HODEI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())
