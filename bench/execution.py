"""Execution benchmark: how fast a submitted job runs on a local worker and its output arrives.

Starts the embedded platform (`hodei dev up`) in a throwaway HODEI_HOME and measures, from a
client on its own NATS connection:

1. cold path (the default ephemeral mode: every job spawns a fresh local agent process):
   `echo hello` jobs one after another, submit -> first log line and submit -> end of log;
2. warm path (dispatch alone: the local provider set to `reusable` with `min_idle` 2, written
   straight into PostgreSQL): submit -> JobStarted as the platform recorded it
   (`jobs.started_at - jobs.created_at`: the API's commit time to the start time the agent
   reported, one host clock) and submit -> first log line as the client saw it;
3. throughput: `true` jobs completed per second with 1 and with 16 concurrent submitters
   (each submits, then waits for its job's end of log before the next), with ephemeral
   workers (`min_idle` 0, `max_workers` 8) and with a warm reusable pool (`min_idle` 8,
   `max_workers` 8).

The ephemeral throughput rounds run before the warm path so that no reusable worker is still
idle when ephemeral mode is measured; the tables are printed in the order above. Agents the
platform leaves running (reusable ones) are stopped at the end.

    .venv/bin/python bench/execution.py [--jobs 100] [--round-jobs 200] [--submitters 1,16]

With the defaults it takes about three minutes on a 2-core machine.

Figures depend on whatever else runs on the machine: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg
import msgspec
from embedded import embedded_platform
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_common import eventloop, messaging
from hodei_common.client import ApiClient
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.logs import LogBatch, LogEnd
from hodei_common.logreader import LiveLog
from hodei_common.settings import Settings
from hodei_common.testing.processes import agent_processes

JOB_DEADLINE_S = 120.0  # a job whose log stays silent this long counts as lost
POOL_DEADLINE_S = 120.0
ACTIVE_STATES = ("CREATING", "READY", "BUSY", "TERMINATING")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@dataclass
class Outcome:
    """One job as the client saw it: seconds from submit to first line and to end of log."""

    job_id: UUID
    first_line_s: float | None
    end_s: float
    succeeded: bool


async def submit_and_follow(api: ApiClient, js: JetStreamContext, request: SubmitJob) -> LiveLog:
    """What `hodei job run` does: listen to the job's log, then submit the job."""
    live = await LiveLog(api.nc, js, api.namespace, uuid4()).open()
    await api.submit(msgspec.structs.replace(request, id=live.job_id))
    return live


async def run_one(api: ApiClient, js: JetStreamContext, command: str) -> Outcome:
    """Submit ``command`` as `hodei job run` does, follow its log until the end marker."""
    started = time.perf_counter()
    live = await submit_and_follow(api, js, SubmitJob(command=command, name="bench-exec"))
    first: float | None = None
    async for message in live.messages(idle_timeout_s=JOB_DEADLINE_S):
        now = time.perf_counter() - started
        if isinstance(message, LogBatch):
            if first is None:
                first = now
        elif isinstance(message, LogEnd):
            return Outcome(live.job_id, first, now, message.state is JobState.SUCCEEDED)
    raise SystemExit(f"job {live.job_id}: no end of log within {JOB_DEADLINE_S:g}s of silence")


# --- the platform ------------------------------------------------------------------------
async def configure(db: asyncpg.Connection, *, mode: str, min_idle: int,
                    max_workers: int = 8) -> None:
    """Set the local provider's pool directly in PostgreSQL (the scheduler reads it live)."""
    await db.execute(
        "UPDATE provider_configs SET worker_mode = $1, min_idle = $2, max_workers = $3 "
        "WHERE name = 'local'", mode, min_idle, max_workers)


async def worker_counts(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT state, count(*) AS n FROM workers GROUP BY state")
    return {row["state"]: row["n"] for row in rows}


async def wait_for_pool(db: asyncpg.Connection, *, ready: int) -> float:
    """Wait until ``ready`` workers are READY and none is being created; return seconds."""
    started = time.perf_counter()
    while True:
        counts = await worker_counts(db)
        if counts.get("READY", 0) >= ready and counts.get("CREATING", 0) == 0:
            return time.perf_counter() - started
        if time.perf_counter() - started > POOL_DEADLINE_S:
            raise SystemExit(f"worker pool not ready after {POOL_DEADLINE_S:g}s: {counts}")
        await asyncio.sleep(0.05)


async def wait_for_no_workers(db: asyncpg.Connection) -> None:
    """Wait until every worker has terminated (ephemeral agents exit after their job)."""
    deadline = time.perf_counter() + POOL_DEADLINE_S
    while True:
        counts = await worker_counts(db)
        if not any(counts.get(state, 0) for state in ACTIVE_STATES):
            return
        if time.perf_counter() > deadline:
            raise SystemExit(f"workers still active after {POOL_DEADLINE_S:g}s: {counts}")
        await asyncio.sleep(0.05)


def signal_agent(pid: int, sig: signal.Signals) -> None:
    """Signal the agent's process group (it leads its own session), else the agent alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def live_agents(nats_url: str, *, templates: bool = True) -> set[int]:
    """The live agents of the platform at ``nats_url`` (spawned or forked), with its local
    agent template unless told otherwise."""
    return set(agent_processes(nats_url, templates=templates))


async def stop_agents(nats_url: str, grace_s: float, *, templates: bool = True) -> int:
    """SIGTERM the platform's live agents (and template), SIGKILL what is left of them after
    ``grace_s``; return how many lived."""
    alive = live_agents(nats_url, templates=templates)
    for pid in alive:
        signal_agent(pid, signal.SIGTERM)
    deadline = time.perf_counter() + grace_s
    while time.perf_counter() < deadline and alive & live_agents(nats_url):
        await asyncio.sleep(0.05)
    for pid in alive & live_agents(nats_url):
        signal_agent(pid, signal.SIGKILL)
    return len(alive)


# --- the sections ------------------------------------------------------------------------
async def cold_path(api: ApiClient, js: JetStreamContext, jobs: int) -> list[Outcome]:
    return [await run_one(api, js, "echo hello") for _ in range(jobs)]


async def warm_path(
    api: ApiClient, js: JetStreamContext, db: asyncpg.Connection, jobs: int
) -> tuple[float, list[Outcome], list[asyncpg.Record]]:
    await configure(db, mode="reusable", min_idle=2)
    pool_s = await wait_for_pool(db, ready=2)
    # The first jobs make the pool grow by one (a busy worker leaves min_idle short): let
    # that happen before measuring, so that no agent is being spawned during the timings.
    for _ in range(3):
        await run_one(api, js, "echo hello")
    await wait_for_pool(db, ready=2)
    outcomes = [await run_one(api, js, "echo hello") for _ in range(jobs)]
    rows = await db.fetch(
        "SELECT extract(epoch FROM assigned_at - created_at)::float8 AS assigned_s, "
        "extract(epoch FROM started_at - created_at)::float8 AS started_s "
        "FROM jobs WHERE id = ANY($1::uuid[])", [o.job_id for o in outcomes])
    return pool_s, outcomes, rows


async def submitter(settings: Settings, queue: list[int], outcomes: list[Outcome]) -> None:
    nc = await messaging.connect(settings, name="bench-exec", initial_attempts=3)
    api = ApiClient(nc, timeout_s=30)
    js = nc.jetstream()
    try:
        while queue:
            queue.pop()
            outcomes.append(await run_one(api, js, "true"))
    finally:
        await nc.close()


async def throughput_round(
    settings: Settings, submitters: int, jobs: int
) -> tuple[float, list[Outcome]]:
    queue = list(range(jobs))
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    await asyncio.gather(*(submitter(settings, queue, outcomes) for _ in range(submitters)))
    return time.perf_counter() - started, outcomes


# --- printing ----------------------------------------------------------------------------
def print_cold(outcomes: list[Outcome]) -> None:
    firsts = [o.first_line_s for o in outcomes if o.first_line_s is not None]
    ends = [o.end_s for o in outcomes]
    failed = sum(not o.succeeded for o in outcomes)
    print(f"\n1. cold path: `echo hello` on a new ephemeral local worker, one job at a time "
          f"({len(outcomes)} jobs, {failed} not succeeded, {len(outcomes) - len(firsts)} "
          f"without a log line)")
    print(f"   {'submit ->':<18} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, values in (("first log line", firsts), ("end of log", ends)):
        print(f"   {label:<18} {ms(statistics.median(values)):>8} "
              f"{ms(percentile(values, 99)):>8} {ms(max(values)):>8}")


def print_warm(pool_s: float, outcomes: list[Outcome], rows: list[asyncpg.Record]) -> None:
    firsts = [o.first_line_s for o in outcomes if o.first_line_s is not None]
    ends = [o.end_s for o in outcomes]
    assigned = [r["assigned_s"] for r in rows if r["assigned_s"] is not None]
    started = [r["started_s"] for r in rows if r["started_s"] is not None]
    failed = sum(not o.succeeded for o in outcomes)
    print(f"\n2. warm path: `echo hello` on an idle reusable worker (min_idle 2; the pool took "
          f"{pool_s:.1f}s to come up), one job at a time ({len(outcomes)} jobs, {failed} not "
          f"succeeded)")
    print(f"   {'':<38} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, values in (
        ("JobAssigned  (assigned_at - created_at)", assigned),
        ("JobStarted   (started_at - created_at)", started),
        ("client: submit -> first log line", firsts),
        ("client: submit -> end of log", ends),
    ):
        print(f"   {label:<38} {ms(statistics.median(values)):>8} "
              f"{ms(percentile(values, 99)):>8} {ms(max(values)):>8}")


def print_throughput(results: list[tuple[str, int, float, list[Outcome]]]) -> None:
    print("\n3. throughput: `true` jobs completed (end of log received) per second; each "
          "submitter waits for its job's end before the next")
    print(f"   {'workers':<34} {'submitters':>10} {'jobs':>5} {'failed':>6} {'jobs/s':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for label, submitters, elapsed, outcomes in results:
        ends = [o.end_s for o in outcomes]
        failed = sum(not o.succeeded for o in outcomes)
        print(f"   {label:<34} {submitters:>10} {len(outcomes):>5} {failed:>6} "
              f"{len(outcomes) / elapsed:>7.1f} {ms(statistics.median(ends)):>8} "
              f"{ms(percentile(ends, 99)):>8}")


# --- main --------------------------------------------------------------------------------
async def main(ns: argparse.Namespace) -> None:
    begun = time.perf_counter()
    async with embedded_platform() as settings:
        nats_url = settings.resolved_nats_url()
        db: asyncpg.Connection | None = None
        nc: NATS | None = None
        try:
            db = await asyncpg.connect(settings.resolved_database_url())
            nc = await messaging.connect(settings, name="bench-exec", initial_attempts=3)
            api = ApiClient(nc, timeout_s=30)
            js = nc.jetstream()
            print(f"platform up in {time.perf_counter() - begun:.1f}s; "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)

            # Warm-up (unmeasured): imports on disk cache, connections, query plans.
            await configure(db, mode="ephemeral", min_idle=0)
            for _ in range(2):
                await run_one(api, js, "echo hello")

            cold = await cold_path(api, js, ns.jobs)
            print_cold(cold)
            sys.stdout.flush()

            rounds: list[tuple[str, int, float, list[Outcome]]] = []
            await configure(db, mode="ephemeral", min_idle=0, max_workers=8)
            for count in ns.submitters:
                await wait_for_no_workers(db)
                elapsed, outcomes = await throughput_round(settings, count, ns.round_jobs)
                rounds.append(("ephemeral (min_idle 0, max 8)", count, elapsed, outcomes))
            await wait_for_no_workers(db)

            pool_s, warm, rows = await warm_path(api, js, db, ns.jobs)
            print_warm(pool_s, warm, rows)
            sys.stdout.flush()

            await configure(db, mode="reusable", min_idle=8, max_workers=8)
            for count in ns.submitters:
                await wait_for_pool(db, ready=8)
                elapsed, outcomes = await throughput_round(settings, count, ns.round_jobs)
                rounds.append(("reusable (min_idle 8, max 8)", count, elapsed, outcomes))
            print_throughput(rounds)

            # Let no new worker be spawned, then stop the idle ones while NATS is still up.
            await configure(db, mode="ephemeral", min_idle=0)
            await asyncio.sleep(0.6)  # one scheduler pass: nothing is being provisioned now
            await stop_agents(nats_url, grace_s=10, templates=False)
            print(f"\ntotal {time.perf_counter() - begun:.0f}s; "
                  f"{len(live_agents(nats_url, templates=False))} agents left running",
                  flush=True)
        finally:
            if nc is not None:
                await nc.close()
            if db is not None:
                await db.close()
    # Whatever agent outlived the platform (a reusable one whose stop went unheard).
    left = await stop_agents(nats_url, grace_s=5)
    if left:
        print(f"stopped {left} agents that outlived the platform", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100,
                        help="jobs measured one at a time in the cold and the warm path")
    parser.add_argument("--round-jobs", type=int, default=200,
                        help="jobs per throughput round")
    parser.add_argument("--submitters", default="1,16",
                        help="comma-separated concurrent submitter counts")
    args = parser.parse_args()
    args.submitters = [int(c) for c in args.submitters.split(",")]
    eventloop.run(main(args))
