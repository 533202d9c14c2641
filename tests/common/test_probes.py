"""The probes on a service's metrics address: /healthz while its loops run, /readyz only
while NATS and PostgreSQL answer (503 with the reason while either is away, 200 again once
it is back), /metrics with the service's gauges; one line for a bad address."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from nats.js import JetStreamContext

from hodei_common import probes
from hodei_common.contracts import subjects
from hodei_common.embedded import NatsServer, PostgresServer
from hodei_common.embedded.process import free_port
from hodei_common.errors import ConfigError
from hodei_common.relay import RelayService, RelaySettings
from hodei_common.runner import HodeiService, share_metrics
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_common.testing.http import get
from hodei_common.testing.plugin import platform_env
from hodei_common.testing.services import running
from hodei_migrations import migrate
from hodei_scheduler.config import SchedulerSettings
from hodei_scheduler.service import SchedulerService

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]



async def fetch(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, url)


@contextlib.asynccontextmanager
async def probed(service: HodeiService) -> AsyncIterator[str]:
    """Run ``service`` with its probes on a free port; yield their base URL."""
    metrics = share_metrics([service])
    async with probes.serving("127.0.0.1:0", [service], metrics) as url, running([service]):
        yield url


async def unready(url: str) -> tuple[int, str] | None:
    """The answer of /readyz when it is 503."""
    code, body = await fetch(f"{url}/readyz")
    return (code, body) if code == 503 else None


async def ready(url: str) -> bool:
    return await fetch(f"{url}/readyz") == (200, "ready\n")


@pytest.fixture
def own_postgres(scratch_dir: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, which it may stop and start again."""
    server = PostgresServer(scratch_dir / "postgres", durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(scratch_dir / "postgres", ignore_errors=True)


async def test_readyz_is_503_while_nats_is_away_and_200_once_it_is_back(
    settings: Settings, nats_server: NatsServer
) -> None:
    service = SchedulerService(SchedulerSettings(**settings.model_dump()))
    async with probed(service) as url:
        assert await fetch(f"{url}/readyz") == (200, "ready\n")
        assert await fetch(f"{url}/healthz") == (200, "ok\n")
        await asyncio.to_thread(nats_server.stop)
        code, reason = await assert_eventually(
            lambda: unready(url), within_s=15)
        assert (code, reason) == (503, "scheduler: NATS is not connected\n")
        assert await fetch(f"{url}/healthz") == (200, "ok\n")  # its loops still run
        await asyncio.to_thread(nats_server.start)
        await assert_eventually(lambda: ready(url), within_s=30)


async def test_readyz_is_503_while_postgresql_is_away_and_200_once_it_is_back(
    settings: Settings, own_postgres: PostgresServer
) -> None:
    admin = await asyncpg.connect(own_postgres.url())
    try:
        await admin.execute("CREATE DATABASE probed")
    finally:
        await admin.close()
    conn = await asyncpg.connect(own_postgres.url("probed"))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    service = RelayService(RelaySettings(**{**settings.model_dump(),
                                            "database_url": own_postgres.url("probed")}))
    async with probed(service) as url:
        assert await fetch(f"{url}/readyz") == (200, "ready\n")
        await asyncio.to_thread(own_postgres.stop)
        code, reason = await assert_eventually(
            lambda: unready(url), within_s=15)
        assert code == 503
        assert reason.startswith("relay: PostgreSQL is unavailable"), reason
        await asyncio.to_thread(own_postgres.start)
        await assert_eventually(lambda: ready(url), within_s=30)
        code, text = await fetch(f"{url}/metrics")
        assert code == 200
        assert "hodei_outbox_unpublished 0.0" in text


async def test_readyz_is_503_while_a_consumer_of_the_service_is_gone(
    settings: Settings, js: JetStreamContext
) -> None:
    service = SchedulerService(SchedulerSettings(**settings.model_dump()))
    async with probed(service) as url:
        assert await fetch(f"{url}/readyz") == (200, "ready\n")
        await js.delete_consumer(subjects.WORKER_STATUS_STREAM,
                                 subjects.SCHEDULER_STATUS_CONSUMER)
        assert await fetch(f"{url}/readyz") == (
            503, "scheduler: consumer WORKER_STATUS/scheduler-status is not bound: "
                 "NotFoundError\n")


async def test_healthz_is_503_once_a_service_has_ended(settings: Settings) -> None:
    service = SchedulerService(SchedulerSettings(**settings.model_dump()))
    async with probed(service) as url:
        await service.stop()
        assert await fetch(f"{url}/healthz") == (503, "not running: scheduler\n")
        assert (await fetch(f"{url}/readyz"))[0] == 503


async def test_a_service_run_as_its_own_process_serves_them_on_hodei_metrics_addr(
    settings: Settings
) -> None:
    port = free_port()
    env = {**os.environ, **platform_env(settings), "HODEI_METRICS_ADDR": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "hodei_scheduler"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        await assert_eventually(lambda: ready(url), within_s=30)
        assert await fetch(f"{url}/healthz") == (200, "ok\n")
        code, text = await fetch(f"{url}/metrics")
        assert code == 200
        assert ('hodei_consumer_pending{consumer="WORKER_STATUS/scheduler-status"} 0.0'
                in text)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0


@pytest.mark.parametrize("addr", ["9464", "localhost", "host:port", ":9464", "h:70000"])
def test_a_bad_metrics_address_is_one_line(addr: str) -> None:
    with pytest.raises(ConfigError, match=r"^HODEI_METRICS_ADDR must be host:port"):
        probes.parse_addr(addr)
