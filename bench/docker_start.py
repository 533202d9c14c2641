"""Docker cold start: how fast a `--provider docker` job gets its container and its output.

Builds the worker image if its sources changed (`hodei worker build-image`), starts the
embedded platform with Docker enabled in a throwaway HODEI_HOME, and runs `echo hello` jobs
on the docker provider one after another, from a client on its own NATS connection:

1. cold (ephemeral workers, no warm pool: every job creates and starts a fresh container):
   submit -> container running (the engine's `start` event of the container labelled with
   the job), submit -> first log line, submit -> end of log;
2. warm (`min_idle` 1: a registered container waits; the pool is refilled between jobs):
   submit -> JobStarted as the platform recorded it (`started_at - created_at`), submit ->
   first log line, submit -> end of log.

    .venv/bin/python bench/docker_start.py [--jobs 20]

Submit times are taken with the wall clock of this host, as the engine's event times are.
Figures depend on whatever else runs on the machine: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import docker
from embedded import embedded_platform
from execution import ms, percentile, wait_for_no_workers, wait_for_pool
from nats.js import JetStreamContext

from hodei_cli.image import build_worker_image, default_tag
from hodei_common import eventloop, messaging
from hodei_common.client import ApiClient
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.logs import LogBatch, LogEnd
from hodei_common.logreader import read_log

JOB_DEADLINE_S = 60.0


@dataclass
class Run:
    job_id: UUID
    submitted: float  # wall clock
    first_line_s: float
    end_s: float


class StartEvents:
    """The engine's container `start` events, by the job label, read in a thread."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.started: dict[str, float] = {}
        self._stream = client.events(decode=True, filters={
            "type": "container", "event": "start", "label": "hodei.managed=true"})
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for event in self._stream:
            job = event.get("Actor", {}).get("Attributes", {}).get("hodei.job_id")
            if job:
                self.started[job] = event["timeNano"] / 1e9

    def close(self) -> None:
        self._stream.close()


async def run_one(api: ApiClient, js: JetStreamContext, provider: str = "docker") -> Run:
    submitted = time.time()
    started = time.perf_counter()
    job = (await api.submit(SubmitJob(command="echo hello", name=f"bench-{provider}",
                                      provider=provider))).job
    first: float | None = None
    async for message in read_log(js, job.namespace, job.id, follow=True,
                                  idle_timeout_s=JOB_DEADLINE_S):
        now = time.perf_counter() - started
        if isinstance(message, LogBatch) and first is None:
            first = now
        elif isinstance(message, LogEnd):
            if message.state is not JobState.SUCCEEDED or first is None:
                raise SystemExit(f"job {job.id} ended {message.state}: {message.error}")
            return Run(job.id, submitted, first, now)
    raise SystemExit(f"job {job.id}: no end of log within {JOB_DEADLINE_S:g}s of silence")


def row(label: str, values: list[float]) -> str:
    return f"| {label} | {ms(percentile(values, 50))} | {ms(percentile(values, 99))} |"


async def main(jobs: int) -> None:
    tag = default_tag()
    build_worker_image(tag)
    engine = docker.from_env()
    events = StartEvents(engine)
    env = {"HODEI_DOCKER_ENABLED": "1", "HODEI_WORKER_IMAGE": tag}
    try:
        async with embedded_platform(env) as settings:
            nc = await messaging.connect(settings, name="bench-docker", initial_attempts=3)
            db = await asyncpg.connect(settings.resolved_database_url())
            api, js = ApiClient(nc, timeout_s=30), nc.jetstream()
            try:
                await run_one(api, js)  # the first container start warms the engine's caches
                await wait_for_no_workers(db)
                cold = []
                for _ in range(jobs):
                    cold.append(await run_one(api, js))
                await wait_for_no_workers(db)
                await db.execute("UPDATE provider_configs SET min_idle = 1 WHERE name = 'docker'")
                warm = []
                for _ in range(jobs):
                    await wait_for_pool(db, ready=1)
                    warm.append(await run_one(api, js))
                started = await db.fetch(
                    "SELECT extract(epoch FROM j.started_at - j.created_at)::float8 AS s, "
                    "w.created_at < j.created_at AS waiting FROM jobs j "
                    "JOIN workers w ON w.id = j.worker_id WHERE j.id = ANY($1::uuid[])",
                    [r.job_id for r in warm])
                await db.execute("UPDATE provider_configs SET min_idle = 0 WHERE name = 'docker'")
            finally:
                await db.close()
                await nc.close()
    finally:
        events.close()
        engine.close()
    running = [events.started[str(r.job_id)] - r.submitted for r in cold
               if str(r.job_id) in events.started]
    report(jobs, cold, warm, running, started)


def report(jobs: int, cold: list[Run], warm: list[Run], running: list[float],
           started: list[Any]) -> None:
    print(f"Docker workers, `echo hello`, {jobs} jobs each (p99 of 20 is their maximum)\n")
    print("| path | p50 ms | p99 ms |\n|---|---:|---:|")
    if running:
        print(row("cold: submit → container running", running))
    print(row("cold: submit → first log line", [r.first_line_s for r in cold]))
    print(row("cold: submit → end of log", [r.end_s for r in cold]))
    print(row("warm (min_idle 1): submit → command started", [r["s"] for r in started]))
    print(row("warm: submit → first log line", [r.first_line_s for r in warm]))
    print(row("warm: submit → end of log", [r.end_s for r in warm]))
    waiting = sum(1 for r in started if r["waiting"])
    print(f"\nwarm jobs given a container that was already waiting: {waiting} of {len(warm)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    eventloop.run(main(parser.parse_args().jobs))
