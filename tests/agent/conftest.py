"""Fixtures of the agent tests: NATS only (no PostgreSQL), and the platform around the agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_common.natsauth import Trust
from hodei_common.settings import Settings
from tests.agent.harness import Platform


@pytest.fixture
def settings(nats_url: str, nats_creds_dir: Path, tmp_path: Path) -> Settings:
    """The agent tests need NATS only: no PostgreSQL."""
    return Settings(nats_url=nats_url, creds_dir=nats_creds_dir, home=tmp_path / "hodei-home")


@pytest.fixture
async def platform(
    nc: NATS, js: JetStreamContext, nats_url: str, nats_trust: Trust, tmp_path: Path
) -> AsyncIterator[Platform]:
    p = Platform(nc, js, nats_url, tmp_path, nats_trust.issuer)
    await p.start()
    await p.open_registration()
    try:
        yield p
    finally:
        for agent in p.agents:
            await agent.kill()
