"""The floor under Hodei's warm path: the same durable hops, with nothing else on them.

What one warm job must cross, kept whole, each part in a process of its own as in `hodei dev
up` (a platform process, agent processes, this process as the client), against a
nats-server (JetStream, file storage) and a durable PostgreSQL (WAL flushed at each commit)
of its own:

1. the client, subscribed to the job's log subject, asks the platform (core NATS
   request/reply) to run a command;
2. the platform inserts the job in PostgreSQL and makes an idle worker busy (one statement,
   committed), publishes the assignment to JetStream (acknowledged), and replies; with no
   worker idle the job waits in memory, and a worker freed later takes it with a statement
   of its own;
3. the worker's agent gets the assignment (a durable consumer of its own), acknowledges it,
   starts ``sh -c COMMAND`` (subprocess: stdout and stderr pipes), reads its output,
   publishes it to the job's log (JetStream, acknowledged), then its report (acknowledged);
4. the platform gets the report (a durable consumer), ends the job and frees its worker in
   PostgreSQL (one statement, committed), publishes the end of the log (acknowledged), acks
   the report; the client sees the end.

Left out, all of what Hodei also does on that path: domain events and their outbox and relay,
audit rows, sagas, the log's start marker and archive, spans, metrics, heartbeats, NATS
users and permissions, validation. Printed as `bench/compare_celery.py` prints its sides
(`echo hello` one at a time, submit to end p50 / p99 ms; `true` from 16 submitters, jobs/s)
with the CPU per job of each part; ``--json PATH`` writes them. The gap between these
figures and Hodei's in the same hour is what Hodei's own work costs; between these and
Celery's, what the durable hops cost. Nothing asserts a time.

    .venv/bin/python bench/floor.py [--jobs 300] [--round-jobs 3000] [--workers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import nats
from cost import processes
from execution import percentile
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from hodei_common import eventloop
from hodei_common.embedded.nats_server import NatsServer
from hodei_common.embedded.postgres import PostgresServer

HELLO = "echo hello"
DEADLINE_S = 30.0
STREAMS = {"FLOOR_ASSIGN": "floor.assign.*", "FLOOR_STATUS": "floor.status.*",
           "FLOOR_LOGS": "floor.logs.>"}
SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (id int PRIMARY KEY, state text NOT NULL,
                                    current_job uuid, jobs_run int NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS jobs (id uuid PRIMARY KEY, command text NOT NULL,
                                 state text NOT NULL, worker_id int, exit_code int,
                                 created_at timestamptz NOT NULL DEFAULT now(),
                                 completed_at timestamptz);
"""
SUBMIT_ASSIGNED = """
WITH job AS (INSERT INTO jobs (id, command, state, worker_id) VALUES ($1, $2, 'ASSIGNED', $3)
             RETURNING id)
UPDATE workers SET state = 'BUSY', current_job = (SELECT id FROM job) WHERE id = $3
"""
SUBMIT_QUEUED = "INSERT INTO jobs (id, command, state) VALUES ($1, $2, 'QUEUED')"
ASSIGN = """
WITH job AS (UPDATE jobs SET state = 'ASSIGNED', worker_id = $2 WHERE id = $1 RETURNING id)
UPDATE workers SET state = 'BUSY', current_job = (SELECT id FROM job) WHERE id = $2
"""
FINISH = """
WITH job AS (UPDATE jobs SET state = $3, exit_code = $4, completed_at = now()
             WHERE id = $1 AND worker_id = $2 AND state = 'ASSIGNED' RETURNING id)
UPDATE workers SET state = 'READY', current_job = NULL, jobs_run = jobs_run + 1
WHERE id = $2 AND EXISTS (SELECT 1 FROM job)
"""


class Submit(msgspec.Struct):
    job_id: uuid.UUID
    command: str


class Assignment(msgspec.Struct):
    job_id: uuid.UUID
    worker_id: int
    command: str


class Report(msgspec.Struct):
    job_id: uuid.UUID
    worker_id: int
    exit_code: int


class Output(msgspec.Struct):
    job_id: uuid.UUID
    stdout: str
    stderr: str


class End(msgspec.Struct):
    job_id: uuid.UUID
    state: str
    exit_code: int


# --- the platform ------------------------------------------------------------------------

async def platform(nats_url: str, db_url: str, workers: int) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=4, max_size=8)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    idle: deque[int] = deque(range(workers))
    waiting: deque[Submit] = deque()
    tasks: set[asyncio.Task[None]] = set()
    await pool.execute("INSERT INTO workers (id, state) SELECT n, 'READY' FROM "
                       "generate_series(0, $1 - 1) AS n ON CONFLICT (id) DO NOTHING", workers)

    def concurrently(handler: Callable[[Msg], Coroutine[Any, Any, None]],
                     ) -> Callable[[Msg], Awaitable[None]]:
        """Each message in a task of its own, as the platform's services handle them."""
        async def cb(msg: Msg) -> None:
            task = asyncio.create_task(handler(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return cb

    async def assign(job: Submit, worker: int) -> None:
        await js.publish(f"floor.assign.{worker}",
                         msgspec.json.encode(Assignment(job.job_id, worker, job.command)))

    async def assign_queued(job: Submit, worker: int) -> None:
        await pool.execute(ASSIGN, job.job_id, worker)
        await assign(job, worker)

    def dispatch() -> None:
        while idle and waiting:
            task = asyncio.create_task(assign_queued(waiting.popleft(), idle.popleft()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def submit(msg: Msg) -> None:
        job = msgspec.json.decode(msg.data, type=Submit)
        if idle and not waiting:
            worker = idle.popleft()
            await pool.execute(SUBMIT_ASSIGNED, job.job_id, job.command, worker)
            await assign(job, worker)
        else:
            await pool.execute(SUBMIT_QUEUED, job.job_id, job.command)
            waiting.append(job)
            dispatch()
        await msg.respond(b"{}")

    async def report(msg: Msg) -> None:
        done = msgspec.json.decode(msg.data, type=Report)
        state = "SUCCEEDED" if done.exit_code == 0 else "FAILED"
        await pool.execute(FINISH, done.job_id, done.worker_id, state, done.exit_code)
        await js.publish(f"floor.logs.{done.job_id}.end",
                         msgspec.json.encode(End(done.job_id, state, done.exit_code)))
        await msg.ack()
        idle.append(done.worker_id)
        dispatch()

    await nc.subscribe("floor.submit", cb=concurrently(submit))
    await js.subscribe("floor.status.*", durable="platform", manual_ack=True,
                       cb=concurrently(report),
                       config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
    print("ready", flush=True)
    await asyncio.Event().wait()


# --- an agent ----------------------------------------------------------------------------

async def agent(nats_url: str, worker: int) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    loop = asyncio.get_running_loop()

    async def read(pipe: object) -> bytes:
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        return await reader.read()

    async def run(msg: Msg) -> None:
        job = msgspec.json.decode(msg.data, type=Assignment)
        await msg.ack()
        proc = subprocess.Popen(["/bin/sh", "-c", job.command], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        out, err = await asyncio.gather(read(proc.stdout), read(proc.stderr))
        if proc.poll() is None:  # its pipes closed as it exits: wait for it on the loop
            pidfd = os.pidfd_open(proc.pid)
            exited: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(pidfd, readable)
            await exited
            loop.remove_reader(pidfd)
            os.close(pidfd)
        code = proc.wait()
        if out or err:
            await js.publish(f"floor.logs.{job.job_id}.{worker}", msgspec.json.encode(
                Output(job.job_id, out.decode(errors="replace"), err.decode(errors="replace"))))
        await js.publish(f"floor.status.{worker}",
                         msgspec.json.encode(Report(job.job_id, worker, code)))

    await js.subscribe(f"floor.assign.{worker}", durable=f"agent-{worker}", manual_ack=True,
                       cb=run, config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
    print("ready", flush=True)
    await asyncio.Event().wait()


# --- the client --------------------------------------------------------------------------

async def one(nc: NATS, command: str) -> tuple[float, End]:
    """Submit ``command`` and wait for its end: seconds, and the end."""
    job_id = uuid.uuid4()
    ended: asyncio.Future[End] = asyncio.get_running_loop().create_future()

    async def seen(msg: Msg) -> None:
        if msg.subject.endswith(".end") and not ended.done():
            ended.set_result(msgspec.json.decode(msg.data, type=End))

    sub = await nc.subscribe(f"floor.logs.{job_id}.*", cb=seen)
    try:
        started = time.perf_counter()
        await nc.request("floor.submit", msgspec.json.encode(Submit(job_id, command)),
                         timeout=DEADLINE_S)
        end = await asyncio.wait_for(ended, DEADLINE_S)
        return time.perf_counter() - started, end
    finally:
        await sub.unsubscribe()


def cpu(parts: dict[str, list[int]], postmaster: int) -> dict[str, float]:
    """CPU seconds used so far by each part (with the children it reaped), PostgreSQL's
    backends and the client included."""
    stats = {s.pid: s for s in processes()}
    used = {name: sum(stats[pid].own_s + stats[pid].reaped_s for pid in pids if pid in stats)
            for name, pids in parts.items()}
    used["PostgreSQL"] = sum(s.own_s + (s.reaped_s if s.pid == postmaster else 0.0)
                             for s in stats.values()
                             if s.pid == postmaster or s.ppid == postmaster)
    own = resource.getrusage(resource.RUSAGE_SELF)
    used["client"] = own.ru_utime + own.ru_stime
    return used


async def spawn_role(*args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), DEADLINE_S)
    if line.strip() != b"ready":
        raise SystemExit(f"{args[:2]} did not start")
    return proc


async def measure(ns: argparse.Namespace) -> dict[str, object]:
    home = Path(tempfile.mkdtemp(prefix="hodei-floor-"))
    home.chmod(0o755)  # PostgreSQL runs unprivileged when the benchmark runs as root
    server, postgres = NatsServer(home / "nats"), PostgresServer(home / "postgres")
    roles: list[asyncio.subprocess.Process] = []
    try:
        server.start()
        postgres.start()
        db_url = postgres.url()
        db = await asyncpg.connect(db_url)
        await db.execute(SCHEMA)
        await db.close()
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        for name, subject in STREAMS.items():
            await js.add_stream(StreamConfig(name=name, subjects=[subject],
                                             storage=StorageType.FILE))
        roles.append(await spawn_role("--role", "platform", server.url, db_url,
                                      str(ns.workers)))
        for worker in range(ns.workers):
            roles.append(await spawn_role("--role", "agent", server.url, str(worker)))
        for _ in range(20):  # warm-up
            await one(nc, HELLO)
        samples = []
        for _ in range(ns.jobs):
            took, end = await one(nc, HELLO)
            if end.exit_code != 0:
                raise SystemExit(f"`{HELLO}` ended {end.state}")
            samples.append(took * 1000)
        parts = {"platform": [roles[0].pid], "agents": [r.pid for r in roles[1:]],
                 "NATS": [server.pid or 0]}
        assert postgres.pid is not None
        before, started = cpu(parts, postgres.pid), time.perf_counter()
        todo = iter(range(ns.round_jobs))

        async def submitter() -> None:
            for _ in todo:
                await one(nc, "true")

        await asyncio.gather(*(submitter() for _ in range(ns.submitters)))
        elapsed = time.perf_counter() - started
        after = cpu(parts, postgres.pid)
        await nc.close()
        return {
            "echo_end_p50_ms": round(statistics.median(samples), 2),
            "echo_end_p99_ms": round(percentile(samples, 99), 2),
            "jobs_per_s": round(ns.round_jobs / elapsed, 1),
            "cpu_ms_per_job": {part: round((after[part] - before[part]) * 1000 / ns.round_jobs, 3)
                               for part in after},
        }
    finally:
        for proc in roles:
            proc.kill()
            await proc.wait()
        postgres.stop()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        role, args = sys.argv[2], sys.argv[3:]
        if role == "platform":
            eventloop.run(platform(args[0], args[1], int(args[2])))
        else:
            eventloop.run(agent(args[0], int(args[1])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="`echo hello` one at a time")
    parser.add_argument("--round-jobs", type=int, default=3000,
                        help="`true` from --submitters submitters")
    parser.add_argument("--submitters", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8, help="agents, one job at a time each")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    ns = parser.parse_args()
    figures = eventloop.run(measure(ns))
    print(f"the floor: {ns.workers} agents, each part a process; ms and jobs/s")
    print(f"`{HELLO}` one at a time, submit -> end p50 / p99: "
          f"{figures['echo_end_p50_ms']} / {figures['echo_end_p99_ms']} ms")
    print(f"`true` x {ns.round_jobs} from {ns.submitters} submitters: "
          f"{figures['jobs_per_s']} jobs/s")
    cpu_per_job = figures["cpu_ms_per_job"]
    assert isinstance(cpu_per_job, dict)
    print("CPU ms per job: " + ", ".join(f"{part} {ms}" for part, ms in cpu_per_job.items())
          + f"; total {sum(cpu_per_job.values()):.2f}")
    if ns.json is not None:
        ns.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
