"""Intake benchmark: jobs/s the API accepts (committed in PostgreSQL and published to JetStream).

Starts the embedded platform (`hodei dev up`, durable PostgreSQL as users get it) in a
throwaway HODEI_HOME, sets the local provider's max_workers to 0 so that no job runs beside
the measurement, then submits jobs from 1 and from 16 concurrent clients, each on its own NATS
connection. A run counts as done when every JobCreated is in the JOB_EVENTS stream.

    .venv/bin/python bench/intake.py [--jobs 3000] [--clients 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from cost import PARTS, platform_pid, sample
from embedded import embedded_platform
from nats.aio.client import Client as NATS

from hodei_common import eventloop, messaging
from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.api import SubmitJob, UpdateProvider
from hodei_common.settings import Settings


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
    assert settings.home is not None
    platform = platform_pid(settings.home)
    probe = await messaging.connect(settings, name="bench-probe", initial_attempts=3)
    try:
        before = await stream_messages(probe)
        cpu_before = sample(settings.home, platform)
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
        cpu_after = sample(settings.home, platform)
    finally:
        await probe.close()
    return {
        **{f"{part} ms": (cpu_after[part] - cpu_before[part]) * 1000 / total for part in PARTS},
        "clients": clients,
        "jobs": total,
        "accepted_per_s": total / replied,
        "published_per_s": total / published,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


async def hold_jobs_queued(settings: Settings) -> None:
    """No workers (max_workers 0): this measures intake, not the jobs running beside it."""
    nc = await messaging.connect(settings, name="bench-setup", initial_attempts=3)
    try:
        await ApiClient(nc).update_provider(UpdateProvider(name="local", max_workers=0))
    finally:
        await nc.close()


async def main(jobs: int, client_counts: list[int]) -> None:
    async with embedded_platform() as settings:
        await hold_jobs_queued(settings)
        await run_round(settings, 4, 200)  # warm-up: connections, plans, JIT-free caches
        print(f"{'clients':>7} {'jobs':>6} {'accepted/s':>11} {'published/s':>12} "
              f"{'p50 ms':>7} {'p99 ms':>7}  CPU ms per job: "
              + ", ".join(PARTS))
        for clients in client_counts:
            r = await run_round(settings, clients, jobs)
            print(f"{r['clients']:>7} {r['jobs']:>6} {r['accepted_per_s']:>11.0f} "
                  f"{r['published_per_s']:>12.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}  "
                  + " ".join(f"{r[f'{part} ms']:.2f}" for part in PARTS),
                  flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per round")
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts")
    ns = parser.parse_args()
    eventloop.run(main(ns.jobs, [int(c) for c in ns.clients.split(",")]))
