"""Fixtures of the provisioner tests: a running provisioner (with a fake agent as its agent
command) and a running relay, so the events they write reach JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hodei_common.relay import RelayService, RelaySettings
from hodei_common.runner import HodeiService
from hodei_common.settings import Settings
from hodei_provisioner.config import ProvisionerSettings
from hodei_provisioner.providers.local import LocalProvider
from hodei_provisioner.service import ProvisionerService

FAKE_AGENT = Path(__file__).with_name("fake_agent.py")


@contextlib.asynccontextmanager
async def running(service: HodeiService) -> AsyncIterator[None]:
    """Run ``service`` for the block; stop it (and re-raise its failure) afterwards."""
    task = asyncio.create_task(service.run())
    ready = asyncio.create_task(service.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        await task
        pytest.fail(f"the {service.name} service stopped before it was ready")
    try:
        yield
    finally:
        await service.stop()
        await task


def local_provider(service: ProvisionerService) -> LocalProvider:
    provider = service.providers["local"]
    assert isinstance(provider, LocalProvider)
    return provider


@pytest.fixture
async def relay(settings: Settings) -> AsyncIterator[RelayService]:
    service = RelayService(RelaySettings(**settings.model_dump(), relay_poll_interval_s=0.2))
    async with running(service):
        yield service


@pytest.fixture
def agent_command() -> list[str]:
    """The local provider's agent command; a test parametrizes it to change the fake's part."""
    return [sys.executable, str(FAKE_AGENT)]


@pytest.fixture
def provisioner_settings(
    settings: Settings, agent_command: list[str], nats_signing_key: Path,
    nats_operator_key: Path, nats_system_creds: Path, tmp_path: Path
) -> ProvisionerSettings:
    return ProvisionerSettings(
        **settings.model_dump(),
        nats_signing_key=nats_signing_key,
        nats_operator_key=nats_operator_key,
        nats_system_creds=nats_system_creds,
        provisioner_revoke_interval_s=0.2,
        provisioner_agent_command=agent_command,
        provisioner_workers_dir=tmp_path / "workers",
        provisioner_destroy_grace_s=1.0,
    )


@pytest.fixture
async def provisioner(
    provisioner_settings: ProvisionerSettings, relay: RelayService,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[ProvisionerService]:
    """A running provisioner; every agent it spawned is destroyed after the test."""
    # As in a deployment, the service's environment holds the database URL: agents must not
    # inherit it.
    monkeypatch.setenv("HODEI_DATABASE_URL", provisioner_settings.resolved_database_url())
    service = ProvisionerService(provisioner_settings)
    async with running(service):
        try:
            yield service
        finally:
            provider = local_provider(service)
            for pid, worker_id in provider.children().items():
                await provider.destroy(str(pid), worker_id=worker_id)
