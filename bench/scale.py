"""Scale benchmark: a deep queue, many workers at once, many readers of one log.

Each part starts its own embedded platform (`hodei dev up`) in a throwaway HODEI_HOME, with
the local provider's pool set straight in PostgreSQL as bench/execution.py does, and samples
the memory of the platform's processes every second from ``/proc/<pid>/status`` (VmRSS, VmHWM
and RssAnon; see bench/memory.py): the platform process, its nats-server, PostgreSQL (the
postmaster and its backends summed, and the largest backend), the agents (summed, and the
largest) and this process, the client.

1. queue: ``--queued`` x ``true`` submitted at once by 32 submitters, each on its own NATS
   connection, calling the API's submit the way `hodei job queue` does (nobody follows a log),
   to a reusable pool of ``--pool`` workers. Measured: jobs/s accepted, seconds from the first
   submit until every job is terminal (PostgreSQL's ``jobs`` counted by state every second),
   jobs/s drained, jobs not succeeded or missing, and each part's memory at the start of the
   drain, its peak and at the end, and the mean over the first tenth of the jobs finished
   against the mean over the last tenth: memory that grows with the jobs processed shows there.
2. workers: ``--workers`` reusable workers at once (``min_idle`` = ``max_workers`` = N):
   seconds until N are READY, then N x ``sleep 1`` at once, each submitted and followed to its
   end of log as `hodei job run` does; memory with the pool idle and at its peak under the
   jobs (agents summed, their mean and the largest). Then ``min_idle`` 0 with an idle TTL of
   1 s lets the platform retire them; how long that took is printed.
3. readers: one job printing ``--lines`` lines (``seq 1 L``) followed by ``--readers``
   clients at once, each on its own NATS connection: by default listening before the submit as
   `hodei job run` does (``--follow live``), or reading the job's stream after the submit as
   `hodei job logs --follow` does (``--follow stream``). Each reader checks it got every line
   once and in order; reported: readers that did not, seconds from submit to each reader's end
   of log (p50 and max), lines/s delivered over all readers, and memory of nats-server, the
   platform and the client.

    .venv/bin/python bench/scale.py [--parts queue,workers,readers] [--queued 10000] [--pool 8]
        [--workers 200] [--readers 100] [--lines 100000] [--follow live|stream] [--json PATH]

Small sizes for a first look: ``--queued 500 --workers 20 --readers 10 --lines 10000``. The
defaults take a few minutes on a 2-core machine. At the end of each part the platform gets
SIGTERM (it retires its workers itself); the script then checks that no process of that
platform (its agents, the platform, nats-server, PostgreSQL) is left and exits 1 if one is.
``--json PATH`` also writes every figure printed. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
from compare_celery import environ_has, hodei_round, pgrep
from cost import platform_pid, processes
from embedded import embedded_platform
from execution import configure, percentile, stop_agents, wait_for_pool
from memory import (
    AGENTS,
    BACKENDS,
    CLIENT,
    NATS,
    PARTS,
    PLATFORM,
    POSTGRES,
    Monitor,
    Sample,
    mean_anon,
    mean_rss,
    mib,
    peak,
)

from hodei_common import eventloop, messaging
from hodei_common.client import ApiClient
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.logs import LogBatch, LogEnd
from hodei_common.errors import HodeiError
from hodei_common.logreader import LiveLog, LogReader
from hodei_common.settings import Settings

PART_NAMES = ("queue", "workers", "readers")
SUBMITTERS = 32
JOB_DEADLINE_S = 120.0  # a log silent this long, or a queue that stops moving this long
RETIRE_DEADLINE_S = 120.0
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print("\n| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


@dataclass
class Platform:
    """One running embedded platform, as the parts see it."""

    settings: Settings
    home: Path
    pid: int
    db: asyncpg.Connection
    nats_url: str


def left_of(home: Path, nats_url: str) -> list[str]:
    """Processes of the platform that served ``home`` still alive: an agent on its NATS, the
    platform itself, its nats-server or PostgreSQL (other runs on the machine are not ours)."""
    found = [f"{pid} {cmd}" for pid, cmd in pgrep("hodei_agent")
             if environ_has(pid, f"HODEI_NATS_URL={nats_url}")]
    found += [f"{s.pid} {' '.join(s.cmdline)}" for s in processes()
              if any(str(home) in a for a in s.cmdline)
              or environ_has(s.pid, f"HODEI_HOME={home}")]
    return sorted(set(found))


@contextlib.asynccontextmanager
async def platform(left: list[str]) -> AsyncIterator[Platform]:
    """The embedded platform for one part; on leaving, its agents outliving it are stopped
    (a backstop: it retires them itself) and whatever of it is still alive is added to
    ``left``."""
    home: Path | None = None
    nats_url = ""
    try:
        async with embedded_platform() as settings:
            assert settings.home is not None
            home, nats_url = settings.home, settings.resolved_nats_url()
            db = await asyncpg.connect(settings.resolved_database_url())
            try:
                yield Platform(settings, home, platform_pid(home), db, nats_url)
            finally:
                await db.close()
    finally:
        outlived = await stop_agents(nats_url, grace_s=5) if nats_url else 0
        if outlived:
            print(f"{outlived} agents outlived the platform; stopped them", file=sys.stderr)
        if home is not None:
            left += left_of(home, nats_url)


async def job_counts(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
    return {row["state"]: row["n"] for row in rows}


def memory_rows(samples: list[Sample], parts: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Per part: processes, MiB at the first sample, peak (summed VmRSS), the largest VmHWM,
    at the last sample, and its private memory (RssAnon) at the last sample."""
    first, last = samples[0], samples[-1]
    rows: list[tuple[str, ...]] = []
    for part in parts:
        rows.append((part, str(last.mem[part].processes), mib(first.mem[part].rss_kib),
                     mib(peak(samples, part)), mib(max(s.mem[part].hwm_kib for s in samples)),
                     mib(last.mem[part].rss_kib), mib(last.mem[part].anon_kib)))
    largest = max(s.mem[BACKENDS].largest_kib for s in samples)
    rows.append(("  largest PostgreSQL backend", "", mib(first.mem[BACKENDS].largest_kib),
                 mib(largest), "", mib(last.mem[BACKENDS].largest_kib), ""))
    return rows


MEMORY_HEADER = ("process (MiB)", "processes", "start", "peak RSS", "largest VmHWM", "end",
                 "end RssAnon")


def memory_json(samples: list[Sample], parts: tuple[str, ...]) -> dict[str, Any]:
    return {part: {"start_mib": round(samples[0].mem[part].rss_kib / 1024, 1),
                   "peak_mib": round(peak(samples, part) / 1024, 1),
                   "peak_hwm_mib": round(max(s.mem[part].hwm_kib for s in samples) / 1024, 1),
                   "end_mib": round(samples[-1].mem[part].rss_kib / 1024, 1),
                   "end_anon_mib": round(samples[-1].mem[part].anon_kib / 1024, 1),
                   "processes_end": samples[-1].mem[part].processes}
            for part in (*parts, BACKENDS)}


# --- 1. queue ----------------------------------------------------------------------------
async def submit_all(settings: Settings, jobs: int) -> tuple[float, list[float], int]:
    """Submit ``jobs`` x ``true`` from SUBMITTERS connections; return seconds, each accepted
    submit's latency and how many submits failed."""
    todo = list(range(jobs))
    latencies: list[float] = []
    failed = 0

    async def submit_loop() -> None:
        nonlocal failed
        nc = await messaging.connect(settings, name="bench-scale", initial_attempts=3)
        api = ApiClient(nc, timeout_s=30)
        try:
            while todo:
                todo.pop()
                started = time.perf_counter()
                try:
                    await api.submit(SubmitJob(command="true", name="bench-scale"))
                except HodeiError as e:
                    failed += 1
                    print(f"submit failed: {e}", file=sys.stderr)
                    continue
                latencies.append(time.perf_counter() - started)
        finally:
            await nc.close()

    started = time.perf_counter()
    await asyncio.gather(*(submit_loop() for _ in range(SUBMITTERS)))
    return time.perf_counter() - started, latencies, failed


async def queue_part(ns: argparse.Namespace, left: list[str]) -> dict[str, Any]:
    async with platform(left) as p:
        await configure(p.db, mode="reusable", min_idle=ns.pool, max_workers=ns.pool)
        pool_s = await wait_for_pool(p.db, ready=ns.pool)
        print(f"queue: pool of {ns.pool} READY in {pool_s:.1f}s; submitting {ns.queued} x "
              f"`true` from {SUBMITTERS} submitters; {load()}", flush=True)

        async def progress() -> dict[str, int]:
            return await job_counts(p.db)

        monitor = Monitor(p.home, p.pid, extra=progress)
        async with monitor.running():
            started = time.perf_counter()
            submit = asyncio.create_task(submit_all(p.settings, ns.queued))
            stuck_since, done_before, counts = time.perf_counter(), -1, {}
            while True:
                await asyncio.sleep(1.0)
                counts = monitor.samples[-1].extra if monitor.samples else {}
                done = sum(counts.get(state, 0) for state in TERMINAL)
                if submit.done() and done >= sum(counts.values()) >= len(submit.result()[1]):
                    break
                if done != done_before:
                    stuck_since, done_before = time.perf_counter(), done
                elif time.perf_counter() - stuck_since > JOB_DEADLINE_S:
                    print(f"queue: no job finished for {JOB_DEADLINE_S:g}s: {counts}",
                          file=sys.stderr)
                    break
            submit_s, latencies, submit_failed = await submit
            counts = await job_counts(p.db)
            drain_s = time.perf_counter() - started
    samples = monitor.samples
    accepted = len(latencies)
    total = sum(counts.values())
    succeeded = counts.get("SUCCEEDED", 0)
    tenth = max(1, ns.queued // 10)

    def done_of(s: Sample) -> int:
        return sum(s.extra.get(state, 0) for state in TERMINAL)

    early = [s for s in samples if s.extra and done_of(s) <= tenth] or samples[:1]
    late = [s for s in samples if s.extra and done_of(s) >= total - tenth] or samples[-1:]
    result: dict[str, Any] = {
        "queued": ns.queued, "pool": ns.pool, "submitters": SUBMITTERS,
        "submit_s": round(submit_s, 2), "accepted": accepted, "submit_failed": submit_failed,
        "accepted_per_s": round(accepted / submit_s, 1),
        "submit_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "submit_p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        "drain_s": round(drain_s, 2), "drained_per_s": round(total / drain_s, 1),
        "jobs_in_db": total, "not_succeeded": total - succeeded,
        "missing": accepted - total, "states": counts,
        "memory": memory_json(samples, PARTS),
        "growth_mib": {part: round((mean_rss(late, part) - mean_rss(early, part)) / 1024, 1)
                       for part in (*PARTS, BACKENDS)},
        "growth_anon_mib": {
            part: round((mean_anon(late, part) - mean_anon(early, part)) / 1024, 1)
            for part in (*PARTS, BACKENDS)},
        "samples": len(samples),
    }
    print(f"\n1. queue: {ns.queued} x `true` submitted at once by {SUBMITTERS} submitters "
          f"(nobody following a log), reusable pool of {ns.pool}")
    table(("", "value"), [
        ("accepted", f"{accepted} in {submit_s:.1f} s ({result['accepted_per_s']} jobs/s; "
                     f"{submit_failed} submits failed)"),
        ("submit reply p50 / p99 ms", f"{result['submit_p50_ms']} / {result['submit_p99_ms']}"),
        ("every job terminal after (from the first submit)", f"{drain_s:.1f} s"),
        ("jobs/s drained", f"{result['drained_per_s']}"),
        ("jobs not succeeded / missing from PostgreSQL",
         f"{result['not_succeeded']} / {result['missing']}"),
        ("jobs by state at the end", ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))),
    ])
    table(MEMORY_HEADER, memory_rows(samples, PARTS))
    table(("process (MiB)", "RSS, first tenth of the jobs done", "last tenth", "growth",
           "RssAnon growth"), [
        (part, mib(mean_rss(early, part)), mib(mean_rss(late, part)),
         mib(mean_rss(late, part) - mean_rss(early, part)),
         mib(mean_anon(late, part) - mean_anon(early, part))) for part in (*PARTS, BACKENDS)])
    print(f"\nSamples every second ({len(samples)}): the first tenth is the {len(early)} "
          f"taken while at most {tenth} jobs were terminal, the last tenth the {len(late)} "
          f"taken once {total - tenth} or more were.", flush=True)
    return result


# --- 2. workers --------------------------------------------------------------------------
async def retire_pool(db: asyncpg.Connection) -> float:
    """Let the platform retire every idle worker (``min_idle`` 0, idle TTL 1 s); return the
    seconds until none is left."""
    await db.execute(
        "UPDATE provider_configs SET min_idle = 0, "
        "settings = settings || jsonb_build_object('idle_ttl_s', 1) WHERE name = 'local'")
    started = time.perf_counter()
    while True:
        live = await db.fetchval(
            "SELECT count(*) FROM workers WHERE state IN "
            "('CREATING', 'READY', 'BUSY', 'TERMINATING')")
        if live == 0:
            return time.perf_counter() - started
        if time.perf_counter() - started > RETIRE_DEADLINE_S:
            print(f"workers: {live} workers not retired after {RETIRE_DEADLINE_S:g}s",
                  file=sys.stderr)
            return time.perf_counter() - started
        await asyncio.sleep(0.2)


async def workers_part(ns: argparse.Namespace, left: list[str]) -> dict[str, Any]:
    n = ns.workers
    async with platform(left) as p:
        monitor = Monitor(p.home, p.pid)
        async with monitor.running():
            await configure(p.db, mode="reusable", min_idle=n, max_workers=n)
            pool_s = await wait_for_pool(p.db, ready=n)
            idle = await monitor.sample()
            print(f"workers: {n} READY in {pool_s:.1f}s; running {n} x `sleep 1` at once; "
                  f"{load()}", flush=True)
            first_job = len(monitor.samples)
            done = await hodei_round(p.settings, n, n, command="sleep 1")
            under_jobs = monitor.samples[first_job:]
            retire_s = await retire_pool(p.db)
    ends = [s.end_s for s in done.samples]
    ok = sum(s.ok for s in done.samples)
    busiest = max(under_jobs or [idle], key=lambda s: s.mem[AGENTS].rss_kib)

    def agents(s: Sample) -> tuple[str, str, str, str]:
        a = s.mem[AGENTS]
        return (str(a.processes), mib(a.rss_kib), mib(a.rss_kib / max(1, a.processes)),
                mib(a.largest_kib))

    others = (PLATFORM, NATS, POSTGRES, CLIENT)
    result: dict[str, Any] = {
        "workers": n, "pool_s": round(pool_s, 2), "jobs_s": round(done.elapsed_s, 2),
        "succeeded": ok, "jobs": len(done.samples),
        "end_p50_s": round(statistics.median(ends), 2), "end_max_s": round(max(ends), 2),
        "retire_s": round(retire_s, 2),
        "agents_idle": dict(zip(("processes", "sum_mib", "mean_mib", "largest_mib"),
                                (float(v) for v in agents(idle)), strict=True)),
        "agents_busy": dict(zip(("processes", "sum_mib", "mean_mib", "largest_mib"),
                                (float(v) for v in agents(busiest)), strict=True)),
        "idle_mib": {part: round(idle.mem[part].rss_kib / 1024, 1) for part in others},
        "peak_mib": {part: round(peak(under_jobs or [idle], part) / 1024, 1)
                     for part in others},
    }
    print(f"\n2. workers: {n} reusable workers, then {n} x `sleep 1` at once (each followed "
          f"to its end of log)")
    table(("", "value"), [
        (f"{n} workers READY after", f"{pool_s:.1f} s"),
        (f"{n} jobs done after", f"{done.elapsed_s:.1f} s (submit -> end p50 "
                                 f"{statistics.median(ends):.2f} s, max {max(ends):.2f} s)"),
        ("jobs succeeded", f"{ok} of {len(done.samples)}"),
        ("every worker retired after (min_idle 0, idle TTL 1 s)", f"{retire_s:.1f} s"),
    ])
    table(("agents (MiB)", "processes", "sum", "mean", "largest"),
          [("pool idle", *agents(idle)), ("under the jobs (largest sum)", *agents(busiest))])
    table(("process (MiB)", "pool idle", "peak under the jobs"),
          [(part, mib(idle.mem[part].rss_kib), mib(peak(under_jobs or [idle], part)))
           for part in others])
    sys.stdout.flush()
    return result


# --- 3. readers --------------------------------------------------------------------------
@dataclass
class Reading:
    lines: int = 0
    in_order: bool = True
    end_s: float | None = None
    fell_back: bool = False


async def count_lines(messages: Any, reading: Reading, started: float) -> None:
    async for message in messages:
        if isinstance(message, LogBatch):
            for line in message.lines:
                reading.lines += 1
                if line.text != str(reading.lines):
                    reading.in_order = False
        elif isinstance(message, LogEnd):
            reading.end_s = time.perf_counter() - started
            return


async def readers_part(ns: argparse.Namespace, left: list[str]) -> dict[str, Any]:
    n, lines = ns.readers, ns.lines
    async with platform(left) as p:
        await configure(p.db, mode="reusable", min_idle=1, max_workers=1)
        await wait_for_pool(p.db, ready=1)
        conns = await asyncio.gather(*(messaging.connect(p.settings, name="bench-scale",
                                                         initial_attempts=3) for _ in range(n)))
        job_id = uuid4()
        readings = [Reading() for _ in range(n)]
        try:
            api = ApiClient(conns[0], timeout_s=30)
            lives = ([await LiveLog(nc, nc.jetstream(), api.namespace, job_id).open()
                      for nc in conns] if ns.follow == "live" else [])
            monitor = Monitor(p.home, p.pid)
            async with monitor.running():
                print(f"readers: {n} readers ({ns.follow}) of one job printing {lines} lines; "
                      f"{load()}", flush=True)
                started = time.perf_counter()
                await api.submit(SubmitJob(id=job_id, command=f"seq 1 {lines}",
                                           name="bench-scale"))

                async def read(i: int) -> None:
                    messages: Any
                    if lives:
                        messages = lives[i].messages(idle_timeout_s=JOB_DEADLINE_S)
                    else:
                        reader = LogReader(conns[i].jetstream(), api.namespace, job_id)
                        messages = reader.messages(follow=True, idle_timeout_s=JOB_DEADLINE_S)
                    async with contextlib.aclosing(messages) as each:
                        await count_lines(each, readings[i], started)
                    readings[i].fell_back = bool(lives) and lives[i].fell_back

                await asyncio.gather(*(read(i) for i in range(n)))
                elapsed = time.perf_counter() - started
        finally:
            for nc in conns:
                await nc.close()
    complete = [r for r in readings if r.lines == lines and r.in_order and r.end_s is not None]
    ends = [r.end_s for r in readings if r.end_s is not None]
    received = sum(r.lines for r in readings)
    samples = monitor.samples
    parts = (NATS, PLATFORM, CLIENT)
    result: dict[str, Any] = {
        "readers": n, "lines": lines, "follow": ns.follow,
        "readers_incomplete": n - len(complete),
        "lines_received_min": min(r.lines for r in readings),
        "lines_received_max": max(r.lines for r in readings),
        "readers_without_end": sum(r.end_s is None for r in readings),
        "readers_fell_back": sum(r.fell_back for r in readings),
        "end_p50_s": round(statistics.median(ends), 2) if ends else None,
        "end_max_s": round(max(ends), 2) if ends else None,
        "lines_per_s": round(received / elapsed),
        "memory": {part: {"start_mib": round(samples[0].mem[part].rss_kib / 1024, 1),
                          "peak_mib": round(peak(samples, part) / 1024, 1),
                          "end_mib": round(samples[-1].mem[part].rss_kib / 1024, 1)}
                   for part in parts},
    }
    how = ("listening before the submit, as `hodei job run`" if ns.follow == "live" else
           "reading the stream after the submit, as `hodei job logs --follow`")
    print(f"\n3. readers: {n} clients following one job printing {lines} lines ({how})")
    table(("", "value"), [
        ("readers that got every line once, in order, and the end",
         f"{len(complete)} of {n}"),
        ("lines received per reader, min / max",
         f"{result['lines_received_min']} / {result['lines_received_max']}"),
        ("readers that went back to the stream (live log unproven)",
         str(result["readers_fell_back"])),
        ("submit -> a reader's end of log, p50 / max s",
         f"{result['end_p50_s']} / {result['end_max_s']}"),
        ("lines/s delivered, all readers", f"{result['lines_per_s']:,}"),
    ])
    table(("process (MiB)", "start", "peak RSS", "end"),
          [(part, mib(samples[0].mem[part].rss_kib), mib(peak(samples, part)),
            mib(samples[-1].mem[part].rss_kib)) for part in parts])
    sys.stdout.flush()
    return result


# --- main --------------------------------------------------------------------------------
async def main(ns: argparse.Namespace) -> int:
    begun = time.perf_counter()
    print(f"{os.cpu_count()} CPUs, {load()}; parts: {', '.join(ns.parts)}", flush=True)
    run = {"queue": queue_part, "workers": workers_part, "readers": readers_part}
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    left: list[str] = []
    try:
        for part in ns.parts:
            results[part] = await run[part](ns, left)
        results["left_behind"] = len(left)
        if ns.json is not None:
            ns.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        print(f"\ntotal {time.perf_counter() - begun:.0f}s; {load()}; processes left behind "
              f"(this run's agents, platforms, nats-server, PostgreSQL): {len(left)}")
        for line in left:
            print(f"  {line}")
    return 1 if left else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PART_NAMES),
                        help="comma-separated parts to run: queue, workers, readers")
    parser.add_argument("--queued", type=int, default=10000,
                        help="queue: `true` jobs submitted at once")
    parser.add_argument("--pool", type=int, default=8,
                        help="queue: reusable workers that drain the queue")
    parser.add_argument("--workers", type=int, default=200,
                        help="workers: reusable workers started at once, and `sleep 1` jobs")
    parser.add_argument("--readers", type=int, default=100,
                        help="readers: clients following the one job's log")
    parser.add_argument("--lines", type=int, default=100000,
                        help="readers: lines the job prints")
    parser.add_argument("--follow", choices=("live", "stream"), default="live",
                        help="readers: listen before the submit (`hodei job run`) or read the "
                        "stream after it (`hodei job logs --follow`)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write every part's figures here as JSON")
    ns = parser.parse_args()
    ns.parts = [p.strip() for p in ns.parts.split(",") if p.strip()]
    unknown = set(ns.parts) - set(PART_NAMES)
    if unknown or not ns.parts:
        parser.error(f"--parts takes some of {', '.join(PART_NAMES)}")
    if min(ns.queued, ns.pool, ns.workers, ns.readers, ns.lines) < 1:
        parser.error("--queued, --pool, --workers, --readers and --lines must be at least 1")
    return ns


if __name__ == "__main__":
    sys.exit(eventloop.run(main(parse_args())))
