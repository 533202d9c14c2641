"""The heartbeat interval is the platform's: agents are told it in the register reply and
the supervisor judges silence by it, whatever each service's own environment says."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from hodei_common import platform_settings
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Heartbeat
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_common.testing.services import running
from hodei_provisioner.config import ProvisionerSettings
from hodei_provisioner.service import ProvisionerService
from hodei_supervisor.config import SupervisorSettings
from hodei_supervisor.service import SupervisorService
from tests.provisioner.helpers import log_text, request_worker, worker

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

PLATFORM_S = 0.3  # what `hodei migrate` recorded
PROVISIONER_S = 5.0  # the provisioner's own environment: agents this slow...
SUPERVISOR_S = 0.01  # ...and the supervisor's: silence this short


@pytest.fixture
async def provisioner_settings(
    settings: Settings, agent_command: list[str], tmp_path: Path, pool: asyncpg.Pool,
    nats_signing_key: Path,
) -> ProvisionerSettings:
    async with pool.acquire() as conn:
        await platform_settings.record(
            conn, settings.model_copy(update={"heartbeat_interval_s": PLATFORM_S}))
    return ProvisionerSettings(**{
        **settings.model_dump(), "heartbeat_interval_s": PROVISIONER_S,
        "provisioner_agent_command": agent_command, "nats_signing_key": nats_signing_key,
        "provisioner_workers_dir": tmp_path / "workers", "provisioner_destroy_grace_s": 1.0})


async def told_interval(workers_dir: Path, worker_id: UUID) -> float | None:
    """The heartbeat interval in the register reply the (fake) agent printed."""
    for line in log_text(workers_dir, worker_id).splitlines():
        if line.startswith("reply "):
            reply = json.loads(json.loads(line.removeprefix("reply "))["data"])
            return float(reply["heartbeat_interval_s"])
    return None


async def beating(nc: NATS, worker_id: UUID, every_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        beat = Heartbeat(worker_id=worker_id, at=datetime.now(UTC))
        await nc.publish(subjects.worker_heartbeat(worker_id), msgspec.json.encode(beat))
        await asyncio.sleep(every_s)


async def test_agents_and_the_supervisor_use_the_platforms_interval_not_their_own(
    provisioner: ProvisionerService, provisioner_settings: ProvisionerSettings,
    settings: Settings, pool: asyncpg.Pool, nc: NATS, caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = SupervisorService(SupervisorSettings(**{
        **settings.model_dump(), "heartbeat_interval_s": SUPERVISOR_S,
        "heartbeat_flush_s": 0.1, "supervisor_sweep_interval_s": 0.1}))
    async with running([supervisor]):
        worker_id = await request_worker(pool)
        interval = await assert_eventually(
            lambda: told_interval(provisioner_settings.workers_dir(), worker_id))
        assert interval == PLATFORM_S
        assert supervisor.sweeper.silence_limit_s == pytest.approx(3 * PLATFORM_S + 0.1)

        # A worker beating at the interval it was told is never taken for silent...
        stop = asyncio.Event()
        beats = asyncio.create_task(beating(nc, worker_id, interval, stop))
        await asyncio.sleep(10 * interval)
        assert (await worker(pool, worker_id))["state"] == "READY"
        # ...and one that stops beating is.
        stop.set()
        await beats

        async def lost() -> bool:
            return bool((await worker(pool, worker_id))["state"] == "FAILED")

        await assert_eventually(lost, within_s=10)

    # Each said so once, as it started.
    said = [r.getMessage() for phase in ("setup", "call") for r in caplog.get_records(phase)
            if r.getMessage().startswith(("provisioner: ", "supervisor: "))]
    why = ("not used; every service uses the platform's value, which `hodei migrate` records "
           "from its environment")
    assert said == [
        f"provisioner: HODEI_HEARTBEAT_INTERVAL_S=5 (the platform's is 0.3): {why}",
        f"supervisor: HODEI_HEARTBEAT_INTERVAL_S=0.01 (the platform's is 0.3): {why}",
    ]
