"""Worker modes on the embedded platform: cancel a running job, warm pool, reusable workers."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from hodei_cli.embedded import Endpoints, retire_workers
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from tests.cli.conftest import HODEI, run_cli
from tests.e2e.conftest import Platform, agent_processes, start_platform, stop_platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
async def db(platform: Platform) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(platform.endpoints["database_url"])
    yield conn
    await conn.execute("UPDATE provider_configs SET worker_mode = 'ephemeral', min_idle = 0, "
                       "settings = '{}' WHERE name = 'local'")
    # Idle workers a test left (a warm pool) are retired the way `dev down` retires them.
    endpoints = Endpoints(**platform.endpoints_only())
    await retire_workers(endpoints, Settings(), within_s=15)
    await conn.close()


async def test_ctrl_c_in_job_run_cancels_the_running_job_and_exits_130(
    platform: Platform, db: asyncpg.Connection
) -> None:
    proc = await asyncio.create_subprocess_exec(
        HODEI, "job", "run", "--command", "echo started; sleep 30", env=platform.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 15) == b"started\n"
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 15) == 130
    job_id = await db.fetchval("SELECT id FROM jobs ORDER BY created_at DESC LIMIT 1")

    async def cancelled() -> bool:
        return await db.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "CANCELLED"

    events = [r["event_type"] for r in await db.fetch(
        "SELECT event_type FROM domain_events WHERE aggregate_id = $1 ORDER BY seq", job_id)]
    await assert_eventually(cancelled, within_s=10, message=f"events so far: {events}")
    await assert_eventually(lambda: not agent_processes(platform.nats_url), within_s=10)
    events = [r["event_type"] for r in await db.fetch(
        "SELECT event_type FROM domain_events WHERE aggregate_id = $1 ORDER BY seq", job_id)]
    # The agent may report STARTED (moments after the start) after the cancel was asked for.
    assert events[-1] == "JobCancelled"
    assert "JobStarted" in events
    assert events.index("JobCancelRequested") < events.index("JobCancelled")


async def test_a_warm_pool_keeps_registered_workers_waiting(
    platform: Platform, db: asyncpg.Connection
) -> None:
    await db.execute("UPDATE provider_configs SET min_idle = 2 WHERE name = 'local'")

    async def two_ready() -> bool:
        return await db.fetchval("SELECT count(*) FROM workers WHERE state = 'READY'") == 2

    await assert_eventually(two_ready, within_s=15)
    ready = {r["id"] for r in await db.fetch("SELECT id FROM workers WHERE state = 'READY'")}
    result = await run_cli(platform.env, "job", "run", "--command", "echo warm")
    assert (result.code, result.stdout) == (0, "warm\n"), result.stderr
    worker = await db.fetchval("SELECT worker_id FROM jobs ORDER BY created_at DESC LIMIT 1")
    assert worker in ready  # no cold start: a waiting worker took it
    await assert_eventually(two_ready, within_s=15)  # and the pool is refilled


async def test_a_reusable_worker_runs_jobs_one_after_another_in_clean_directories(
    platform: Platform, db: asyncpg.Connection
) -> None:
    await db.execute("UPDATE provider_configs SET worker_mode = 'reusable', "
                     "settings = '{\"max_jobs\": 3}' WHERE name = 'local'")
    outputs = []
    for i in range(3):
        result = await run_cli(platform.env, "job", "run", "--env", f"N={i}", "--command",
                               'echo "$N $(ls -A | wc -l)"; touch leftover')
        assert result.code == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs == ["0 0\n", "1 0\n", "2 0\n"]  # env per job, nothing left from the last
    workers = {r["worker_id"] for r in await db.fetch(
        "SELECT worker_id FROM jobs ORDER BY created_at DESC LIMIT 3")}
    assert len(workers) == 1
    (worker_id,) = workers

    async def retired() -> bool:
        row = await db.fetchrow("SELECT state, jobs_run FROM workers WHERE id = $1", worker_id)
        return bool(row["state"] == "TERMINATED" and row["jobs_run"] == 3)

    await assert_eventually(retired, within_s=10)
    async def beat_recorded() -> bool:  # the supervisor writes beats once a second
        shown = json.loads((await run_cli(platform.env, "worker", "list", "-o",
                                          "json")).stdout)
        return any(w["id"] == str(worker_id) and w["last_heartbeat"] for w in shown)

    await assert_eventually(beat_recorded, within_s=5)


async def test_stopping_the_platform_ends_every_worker_it_runs() -> None:
    root = Path(tempfile.mkdtemp(prefix="hodei-e2e-stop-"))
    root.chmod(0o755)
    running = start_platform(root / "home")
    try:
        conn = await asyncpg.connect(running.endpoints["database_url"])
        try:
            # Reusable workers and a warm pool: the scheduler would keep replacing what the
            # shutdown retires if it went on provisioning.
            await conn.execute("UPDATE provider_configs SET min_idle = 3, worker_mode = "
                               "'reusable' WHERE name = 'local'")
            busy = await asyncio.create_subprocess_exec(
                HODEI, "job", "run", "--command", "echo busy; sleep 60", env=running.env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            assert busy.stdout is not None
            assert await asyncio.wait_for(busy.stdout.readline(), 15) == b"busy\n"

            async def pool_ready() -> bool:
                return await conn.fetchval(
                    "SELECT count(*) FROM workers WHERE state = 'READY'") >= 3

            await assert_eventually(pool_ready, within_s=15)
            assert len(agent_processes(running.nats_url)) >= 3
        finally:
            await conn.close()
        nats_url = running.nats_url
        assert stop_platform(running) == 0
        assert agent_processes(nats_url, templates=True) == []
        code = await asyncio.wait_for(busy.wait(), 15)
        assert code == 130  # its job was cancelled as the platform stopped
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
        shutil.rmtree(root, ignore_errors=True)
