"""Recovery benchmark: how fast a job runs again after its worker dies, and what chaos costs.

Starts nats-server, PostgreSQL and the six services each as its own process (defaults for
every setting) and measures:

1. agent killed -9 mid-job (the local provider reaps it at once): time from the kill to the
   job RUNNING again (``started_at`` of attempt 2, one host clock);
2. agent frozen (SIGSTOP: alive to the kernel, silent to the platform, so only the
   supervisor's heartbeat check can find it): time from the freeze to the job RUNNING again;
3. chaos: 50 jobs while each service in turn is killed -9 and restarted: jobs lost, jobs
   completed twice (a job leaves one line in a file of its own each time it runs to the end),
   workers or agents left over.

    .venv/bin/python bench/recovery.py [--kills 10] [--freezes 5]

About two minutes on a 2-core machine. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import nats
from nats.aio.client import Client as NATS

from hodei_common.client import ApiClient
from hodei_common.contracts.api import SubmitJob
from hodei_common.errors import HodeiError
from hodei_common.testing.processes import (
    SERVICE_MODULES,
    ProcessPlatform,
    agent_processes,
    start_process_platform,
)

TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"]


async def submit(nc: NATS, command: str, job_id: UUID | None = None) -> UUID:
    job_id = job_id or uuid4()
    while True:
        try:
            await ApiClient(nc, timeout_s=2.0).submit(SubmitJob(id=job_id, command=command))
            return job_id
        except (HodeiError, nats.errors.Error, TimeoutError):
            await asyncio.sleep(0.2)


async def poll(pool: asyncpg.Pool, sql: str, *args: object, within_s: float = 120) -> object:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            value = await pool.fetchval(sql, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            value = None
        if value:
            return value
        await asyncio.sleep(0.02)
    raise TimeoutError(sql)


async def time_to_run_again(nc: NATS, pool: asyncpg.Pool, sig: signal.Signals) -> float:
    """Seconds from sending ``sig`` to a running job's agent to the job RUNNING again."""
    job_id = await submit(nc, "sleep 4; echo done")
    pid = int(str(await poll(
        pool, "SELECT w.provider_resource_id FROM jobs j JOIN workers w ON w.id = j.worker_id "
              "WHERE j.id = $1 AND j.state = 'RUNNING'", job_id)))
    at = datetime.now().astimezone()
    os.kill(pid, sig)
    started = await poll(pool, "SELECT started_at FROM jobs WHERE id = $1 AND attempt = 2 AND "
                               "started_at IS NOT NULL", job_id)
    await poll(pool, "SELECT state = ANY($2) FROM jobs WHERE id = $1", job_id, TERMINAL)
    if sig is signal.SIGSTOP:  # destroyed by then; let a survivor go in any case
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert isinstance(started, datetime)
    return (started - at).total_seconds()


async def chaos_round(platform: ProcessPlatform, nc: NATS, pool: asyncpg.Pool) -> dict[str, int]:
    marks = Path(tempfile.mkdtemp(prefix="hodei-marks-"))
    ids = [uuid4() for _ in range(50)]
    for job_id in ids:
        await submit(nc, f"sleep 0.5; echo ran >> {marks / str(job_id)}", job_id)
    for name in SERVICE_MODULES:
        platform.services.kill(name)
        await asyncio.sleep(0.5)
        platform.services.start(name)
        await asyncio.sleep(1.0)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        platform.services.revive()
        try:
            done = await pool.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1) AND "
                                       "state = ANY($2)", ids, TERMINAL)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            done = 0
        if done == len(ids):
            break
        await asyncio.sleep(0.5)
    succeeded = await pool.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1) AND "
                                    "state = 'SUCCEEDED'", ids)
    twice = sum(1 for j in ids if (marks / str(j)).exists()
                and (marks / str(j)).read_text().count("ran") > 1)
    twice_events = await pool.fetchval(
        "SELECT count(*) FROM (SELECT aggregate_id FROM domain_events WHERE aggregate_id = "
        "ANY($1) AND event_type = 'JobSucceeded' GROUP BY 1 HAVING count(*) > 1) AS t", ids)
    await asyncio.sleep(10)  # releases after the last job
    live = await pool.fetchval("SELECT count(*) FROM workers WHERE state IN ('CREATING', "
                               "'READY', 'BUSY', 'TERMINATING')")
    return {"jobs": len(ids), "lost": len(ids) - succeeded, "completed twice": twice,
            "JobSucceeded twice": twice_events,
            "orphan workers": live, "orphan agents": len(agent_processes(platform.nats_url)),
            "service restarts by the harness": sum(platform.services.restarts.values())}


def _line(name: str, values: list[float]) -> str:
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values
    return (f"| {name} | {len(values)} | {statistics.median(values):.2f} | {q[-1]:.2f} | "
            f"{max(values):.2f} |")


async def main(kills: int, freezes: int) -> None:
    platform = await asyncio.to_thread(start_process_platform)
    try:
        nc = await platform.connect()
        pool = await asyncpg.create_pool(platform.database_url, min_size=1, max_size=2)
        killed = [await time_to_run_again(nc, pool, signal.SIGKILL) for _ in range(kills)]
        frozen = [await time_to_run_again(nc, pool, signal.SIGSTOP) for _ in range(freezes)]
        print("| worker death → job running again | runs | p50 s | p90 s | max s |")
        print("|---|---:|---:|---:|---:|")
        print(_line("agent killed -9 (provider sees the exit)", killed))
        print(_line("agent frozen (heartbeat timeout)", frozen))
        print()
        counts = await chaos_round(platform, nc, pool)
        print("| chaos: each service killed -9 and restarted while jobs run | count |")
        print("|---|---:|")
        for key, value in counts.items():
            print(f"| {key} | {value} |")
        await pool.close()
        await nc.close()
    finally:
        await asyncio.to_thread(platform.stop)
        for pid in agent_processes(platform.nats_url):
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--freezes", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.kills, args.freezes))
