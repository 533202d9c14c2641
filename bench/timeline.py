"""Where one job's time goes, hop by hop: the warm path of `echo hello`, step by step.

Runs `hodei dev up` in a throwaway HODEI_HOME with a warm reusable pool (as
bench/compare_celery.py does), runs ``--jobs`` x ``echo hello`` one at a time as
`hodei job run` does, and then puts each job's steps on one clock (this host's):

- the client's own: submit sent, reply received, first log line, end of log;
- the time JetStream stored each message about the job (``Nats-Time-Stamp``): its events
  (``job.<id>.*``), its assignment, its log's start marker, batches and end, its agent's
  status reports, its worker's events;
- the times PostgreSQL recorded (``jobs.created_at``, ``assigned_at``, ``started_at``,
  ``completed_at``: each its transaction's start).

Printed: each step's p50 and p90 in milliseconds after the submit, in the order of their p50.
The gap between two lines is what one hop costs. A quiet machine gives figures worth
comparing: run it before and after a change. Nothing asserts a time.

    .venv/bin/python bench/timeline.py [--jobs 50] [--pool 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import defaultdict
from datetime import datetime
from uuid import UUID, uuid4

import asyncpg
import msgspec
from embedded import embedded_platform
from execution import configure, percentile, wait_for_pool
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from hodei_common import eventloop, messaging
from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.logs import LogBatch, LogEnd
from hodei_common.logreader import LiveLog

DEADLINE_S = 60.0


async def stored(js: JetStreamContext, stream: str, subject: str) -> list[tuple[str, float, bytes]]:
    """Every message of ``stream`` on ``subject``: its subject, store time and data."""
    found: list[tuple[str, float, bytes]] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return found
        when = datetime.fromisoformat(str(msg.time)).timestamp() if msg.time else 0.0
        found.append((msg.subject or subject, when, msg.data or b""))
        seq = (msg.seq or seq) + 1


def job_of(data: bytes) -> str | None:
    try:
        decoded = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    return str(decoded.get("job_id")) if isinstance(decoded, dict) else None


def kind_of(data: bytes) -> str:
    decoded = msgspec.json.decode(data)
    return str(decoded.get("kind", "?")) if isinstance(decoded, dict) else "?"


async def one(api: ApiClient, js: JetStreamContext) -> tuple[UUID, dict[str, float], float]:
    """Run `echo hello` as `hodei job run` does; its client-side steps and its submit time."""
    live = await LiveLog(api.nc, js, api.namespace, uuid4()).open()
    sent = time.time()
    await api.submit(SubmitJob(id=live.job_id, command="echo hello", name="timeline"))
    steps = {"client: reply to submit": time.time()}
    async for message in live.messages(idle_timeout_s=DEADLINE_S):
        if isinstance(message, LogBatch):
            steps.setdefault("client: first line", time.time())
        elif isinstance(message, LogEnd):
            steps["client: end of log"] = time.time()
            return live.job_id, steps, sent
    raise SystemExit(f"job {live.job_id}: no end of log")


async def platform_steps(js: JetStreamContext, db: asyncpg.Connection, job_id: UUID,
                         namespace: str) -> dict[str, float]:
    steps: dict[str, float] = {}
    row = await db.fetchrow(
        "SELECT worker_id, created_at, assigned_at, started_at, completed_at FROM jobs "
        "WHERE id = $1", job_id)
    assert row is not None
    for column in ("created_at", "assigned_at"):
        steps[f"postgres: {column}"] = row[column].timestamp()
    # When each event was made, just before the statement that recorded it.
    for event in await db.fetch("SELECT event_type, occurred_at FROM domain_events "
                                "WHERE correlation_id = $1", str(job_id)):
        steps[f"event made: {event['event_type']}"] = event["occurred_at"].timestamp()
    for subject, when, _ in await stored(js, subjects.JOB_EVENTS_STREAM,
                                         subjects.job_events_of(job_id)):
        steps[f"stored: job.{subject.rsplit('.', 1)[-1]}"] = when
    worker = row["worker_id"]
    for _, when, data in await stored(js, subjects.WORKER_ASSIGN_STREAM,
                                      subjects.worker_assign(worker)):
        if job_of(data) == str(job_id):
            steps["stored: assignment"] = when
    for _, when, data in await stored(js, subjects.WORKER_STATUS_STREAM,
                                      subjects.worker_status(worker)):
        if job_of(data) == str(job_id):
            steps[f"stored: report {kind_of(data)}"] = when
    platform = subjects.platform_logs(namespace, job_id)
    for subject, when, data in await stored(js, subjects.LOGS_STREAM,
                                            f"logs.{namespace}.{job_id}.>"):
        if subject != platform:
            steps.setdefault("stored: first log batch", when)
            steps["stored: last log batch"] = when
        elif "state" in msgspec.json.decode(data):
            steps["stored: log end"] = when
        else:
            steps["stored: log start"] = when
    return steps


async def main(ns: argparse.Namespace) -> None:
    extra = dict(pair.split("=", 1) for pair in ns.env)
    async with embedded_platform(extra) as settings:
        db = await asyncpg.connect(settings.resolved_database_url())
        nc = await messaging.connect(settings, name="bench-timeline", initial_attempts=3)
        try:
            api = ApiClient(nc, timeout_s=30)
            js = nc.jetstream()
            await configure(db, mode="reusable", min_idle=ns.pool, max_workers=ns.pool)
            await wait_for_pool(db, ready=ns.pool)
            for _ in range(10):  # warm-up, unmeasured
                await one(api, js)
            runs: list[tuple[UUID, dict[str, float], float]] = []

            todo = list(range(ns.jobs))

            async def submitter() -> None:
                while todo:
                    todo.pop()
                    runs.append(await one(api, js))

            await asyncio.gather(*(submitter() for _ in range(ns.submitters)))
            offsets: dict[str, list[float]] = defaultdict(list)
            for job_id, steps, sent in runs:
                steps.update(await platform_steps(js, db, job_id, api.namespace))
                for name, when in steps.items():
                    offsets[name].append((when - sent) * 1000)
        finally:
            await nc.close()
            await db.close()
    print(f"{len(runs)} x `echo hello` from {ns.submitters} submitters on a warm pool of "
          f"{ns.pool}; ms after the submit was sent")
    print(f"{'step':<40} {'p50':>7} {'p90':>7} {'n':>4}")
    for name, values in sorted(offsets.items(), key=lambda kv: statistics.median(kv[1])):
        print(f"{name:<40} {statistics.median(values):7.2f} {percentile(values, 90):7.2f} "
              f"{len(values):4d}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--submitters", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], metavar="HODEI_NAME=VALUE",
                        help="a setting of the platform's (repeatable), to compare two runs")
    eventloop.run(main(parser.parse_args()))
