"""Intake benchmark: jobs/s the API accepts (committed in PostgreSQL and published to JetStream).

Starts the embedded platform (`hodei dev up`, durable PostgreSQL as users get it) in a
throwaway HODEI_HOME, then submits jobs from 1 and from 16 concurrent clients, each on its own
NATS connection. A run counts as done when every JobCreated is in the JOB_EVENTS stream.

    .venv/bin/python bench/intake.py [--jobs 3000] [--clients 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nats.aio.client import Client as NATS

from hodei_common import messaging
from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.api import SubmitJob
from hodei_common.settings import Settings

HODEI = str(Path(sys.executable).with_name("hodei"))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def stream_messages(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(subjects.JOB_EVENTS_STREAM)
    return int(info.state.messages)


async def client_loop(settings: Settings, count: int, latencies: list[float]) -> None:
    nc = await messaging.connect(settings, name="bench", initial_attempts=3)
    api = ApiClient(nc, timeout_s=30)
    try:
        for i in range(count):
            started = time.perf_counter()
            await api.submit(SubmitJob(command=f"echo {i}", name="bench"))
            latencies.append(time.perf_counter() - started)
    finally:
        await nc.close()


async def run_round(settings: Settings, clients: int, jobs: int) -> dict[str, float]:
    probe = await messaging.connect(settings, name="bench-probe", initial_attempts=3)
    try:
        before = await stream_messages(probe)
        latencies: list[float] = []
        per_client = jobs // clients
        started = time.perf_counter()
        await asyncio.gather(
            *(client_loop(settings, per_client, latencies) for _ in range(clients))
        )
        replied = time.perf_counter() - started
        total = per_client * clients
        while await stream_messages(probe) < before + total:
            await asyncio.sleep(0.005)
        published = time.perf_counter() - started
    finally:
        await probe.close()
    return {
        "clients": clients,
        "jobs": total,
        "accepted_per_s": total / replied,
        "published_per_s": total / published,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


async def main(jobs: int, client_counts: list[int]) -> None:
    home = Path(tempfile.mkdtemp(prefix="hodei-bench-"))
    home.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env["HODEI_HOME"] = str(home)
    platform = await asyncio.create_subprocess_exec(
        HODEI, "dev", "up", env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        while not (home / "dev.json").exists():
            if platform.returncode is not None:
                raise SystemExit("hodei dev up failed")
            await asyncio.sleep(0.05)
        dev = json.loads((home / "dev.json").read_text())
        settings = Settings(nats_url=dev["nats_url"], database_url=dev["database_url"])
        await run_round(settings, 4, 200)  # warm-up: connections, plans, JIT-free caches
        print(f"{'clients':>7} {'jobs':>6} {'accepted/s':>11} {'published/s':>12} "
              f"{'p50 ms':>7} {'p99 ms':>7}")
        for clients in client_counts:
            r = await run_round(settings, clients, jobs)
            print(f"{r['clients']:>7} {r['jobs']:>6} {r['accepted_per_s']:>11.0f} "
                  f"{r['published_per_s']:>12.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}",
                  flush=True)
    finally:
        platform.send_signal(signal.SIGTERM)
        await platform.wait()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per round")
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts")
    ns = parser.parse_args()
    asyncio.run(main(ns.jobs, [int(c) for c in ns.clients.split(",")]))
