"""The lifecycle package: named statements, the transition tables, fences, one home."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest

from hodei_common import tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Outcome, StatusKind, StatusReport
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.jobs import JobCreated, JobState
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.contracts.workers import WorkerMode, WorkerReady
from hodei_common.lifecycle import jobs, queries, transitions, workers
from hodei_common.lifecycle.transitions import JOBS, WORKERS, UnknownTransition

ROOT = Path(__file__).resolve().parents[2]
STATE_TABLES = ("jobs", "workers", "sagas", "saga_steps", "domain_events")


def test_named_parameters_become_numbered_once_each() -> None:
    q = queries.parse("""
-- name: move
-- says what it does: a job's :comment_word is not a parameter, nor 'a :quoted' one
UPDATE jobs SET state = :to_state, note = ':literal', id = :job_id::uuid
WHERE id = :job_id AND state = ANY(:from_states)
""")["move"]
    assert q.params == ("to_state", "job_id", "from_states")
    assert "$1" in q.sql
    assert "$2::uuid" in q.sql
    assert "ANY($3)" in q.sql
    assert "':literal'" in q.sql
    assert ":comment_word" in q.sql


def test_a_statement_call_missing_or_adding_a_parameter_is_refused_before_sending() -> None:
    q = queries.parse("-- name: one\nSELECT :a, :b")["one"]
    assert q.args({"b": 2, "a": 1}) == [1, 2]
    with pytest.raises(TypeError, match=r"missing parameters \['b'\]"):
        q.args({"a": 1})
    with pytest.raises(TypeError, match=r"unknown parameters \['c'\]"):
        q.args({"a": 1, "b": 2, "c": 3})


def test_a_file_naming_a_statement_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        queries.parse("-- name: a\nSELECT 1\n-- name: a\nSELECT 2")


def test_a_transition_not_in_its_table_is_refused_with_a_clear_error() -> None:
    with pytest.raises(UnknownTransition, match="job has no transition 'teleport'"):
        JOBS["teleport"]
    with pytest.raises(UnknownTransition, match="job cannot go from QUEUED to SUCCEEDED"):
        JOBS.between(JobState.QUEUED, JobState.SUCCEEDED)
    assert [t.name for t in JOBS.between(JobState.RUNNING, JobState.SUCCEEDED)] == ["succeed"]
    created = JobCreated(event_id=uuid4(), occurred_at=datetime.now(UTC), job_id=uuid4(),
                         attempt=1, namespace="n", name="n", provider="local", priority=0,
                         timeout_s=1.0)
    with pytest.raises(UnknownTransition, match="'assign' does not record JobCreated"):
        JOBS["assign"].subject(created)


def test_a_job_events_subject_names_its_job_and_a_worker_events_does_not() -> None:
    job_id, worker_id = uuid4(), uuid4()
    created = JobCreated(event_id=uuid4(), occurred_at=datetime.now(UTC), job_id=job_id,
                         attempt=1, namespace="n", name="n", provider="local", priority=0,
                         timeout_s=1.0)
    assert JOBS["submit"].subject(created) == f"job.{job_id}.created"
    ready = WorkerReady(event_id=uuid4(), occurred_at=datetime.now(UTC), worker_id=worker_id,
                        provider="local")
    assert WORKERS["free"].subject(ready) == subjects.WORKER_READY


def test_every_statement_is_used_and_every_transition_has_a_function() -> None:
    modules = {"jobs.sql": jobs.SQL, "workers.sql": workers.SQL}
    source = "".join((ROOT / "libs/hodei_common/lifecycle" / f).read_text()
                     for f in ("jobs.py", "workers.py"))
    for file, statements in modules.items():
        for name in statements:
            assert f'SQL["{name}"]' in source, f"{file}: {name} is never run"
    for t in [*JOBS, *WORKERS]:
        assert f'"{t.name}"' in source, f"no function makes {t.aggregate} transition {t.name}"


def test_the_architecture_doc_shows_the_codes_transition_tables() -> None:
    doc = (ROOT / "docs/architecture.md").read_text()
    shown = re.search(r"<!-- transitions:begin -->\n(.*?)<!-- transitions:end -->", doc, re.S)
    assert shown is not None, "docs/architecture.md has no transition tables"
    assert shown.group(1) == transitions.markdown(), (
        "docs/architecture.md is out of date: paste the output of "
        "`python -m hodei_common.lifecycle.transitions` between its transitions markers")


def test_no_state_changing_sql_outside_the_lifecycle_package() -> None:
    pattern = rf"(UPDATE|INSERT INTO|DELETE FROM)[[:space:]]+({'|'.join(STATE_TABLES)})\b"
    found = subprocess.run(
        ["grep", "-rnE", pattern, "--include=*.py", "--include=*.sql", "libs", "services",
         "cli", "agent"], cwd=ROOT, capture_output=True, text=True, check=False).stdout
    stray = [line for line in found.splitlines()
             if not line.startswith("libs/hodei_common/lifecycle/") and "/testing/" not in line]
    assert stray == []


# --- fences, against a real database ------------------------------------------------------
def _report(job_id: object, worker_id: object, kind: StatusKind, **more: object) -> StatusReport:
    return StatusReport(job_id=job_id, attempt=1, worker_id=worker_id, kind=kind,
                        at=datetime.now(UTC), **more)  # type: ignore[arg-type]


async def _counts(pool: asyncpg.Pool) -> tuple[int, int]:
    return (await pool.fetchval("SELECT count(*) FROM domain_events"),
            await pool.fetchval("SELECT count(*) FROM outbox_events"))


@pytest.mark.postgres
async def test_a_transition_whose_fence_does_not_hold_changes_and_records_nothing(
    pool: asyncpg.Pool,
) -> None:
    job_id = uuid4()
    async with pool.acquire() as conn:
        assert await jobs.submit(conn, SubmitJob(command="true"), job_id=job_id,
                                 namespace=DEFAULT_NAMESPACE, actor="t")
        before = await _counts(pool)
        worker_id = uuid4()
        # QUEUED: it cannot start, finish, or be cancelled as a held job.
        assert await jobs.start(conn, _report(job_id, worker_id, StatusKind.STARTED),
                                actor="t") is None
        assert await jobs.finish(conn, _report(job_id, worker_id, StatusKind.FINISHED,
                                               outcome=Outcome.SUCCEEDED),
                                 Outcome.SUCCEEDED, provider="local", actor="t") is None
        assert await jobs.request_cancel(conn, job_id, 1, None, actor="t") is None
        assert await _counts(pool) == before
        assert await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "QUEUED"
        assert await jobs.cancel_queued(conn, job_id, 1, actor="t") is not None
        # CANCELLED now: cancelling it again is no transition.
        assert await jobs.cancel_queued(conn, job_id, 1, actor="t") is None
    assert await _counts(pool) == (before[0] + 1, before[1] + 1)


@pytest.mark.postgres
async def test_a_workers_events_carry_the_job_it_was_made_for(pool: asyncpg.Pool) -> None:
    job_id, worker_id = uuid4(), uuid4()
    async with pool.acquire() as conn:
        await jobs.submit(conn, SubmitJob(command="true"), job_id=job_id,
                          namespace=DEFAULT_NAMESPACE, actor="t")
        ref = workers.WorkerRef(worker_id, "local", job_id)
        assert await workers.request(conn, ref, mode=WorkerMode.EPHEMERAL, cpus=None,
                                     memory_bytes=None, actor="t")
        assert await workers.record_resource(conn, ref, "123", actor="t")
        assert await workers.register(conn, ref, "host", actor="t") is not None
        rows = await conn.fetch("SELECT event_type, correlation_id FROM domain_events "
                                "WHERE aggregate_id = $1 ORDER BY seq", worker_id)
    assert [r["event_type"] for r in rows] == [
        "ProvisionRequested", "WorkerCreated", "WorkerRegistered", "WorkerReady"]
    assert {r["correlation_id"] for r in rows} == {str(job_id)}


@pytest.mark.postgres
async def test_events_written_outside_a_jobs_trace_continue_it_and_name_the_job(
    pool: asyncpg.Pool,
) -> None:
    job_id, worker_id = uuid4(), uuid4()
    tracing.use_service("test")
    async with pool.acquire() as conn:
        with tracing.tracer().start_as_current_span("submit") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            await jobs.submit(conn, SubmitJob(command="true"), job_id=job_id,
                              namespace=DEFAULT_NAMESPACE, actor="t")
        # A sweep or a dispatch pass writes outside any trace, or inside one of its own.
        ref = workers.WorkerRef(worker_id, "local", job_id)
        assert await workers.request(conn, ref, mode=WorkerMode.EPHEMERAL, cpus=None,
                                     memory_bytes=None, actor="t")
        with tracing.tracer().start_as_current_span("a pass of its own"):
            assert await jobs.cancel_queued(conn, job_id, 1, actor="t") is not None
        rows = await conn.fetch(
            "SELECT o.event_type, o.headers, d.trace_id FROM outbox_events o "
            "JOIN domain_events d USING (id) WHERE d.correlation_id = $1 ORDER BY o.seq",
            str(job_id))
        stored = await conn.fetchval("SELECT traceparent FROM jobs WHERE id = $1", job_id)
    assert tracing.trace_id_of(stored) == trace_id
    assert [r["event_type"] for r in rows] == [
        "JobCreated", "ProvisionRequested", "JobCancelled"]
    for r in rows:
        headers = r["headers"]
        assert tracing.trace_id_of(headers["traceparent"]) == trace_id, r["event_type"]
        assert r["trace_id"] == trace_id
        assert f"hodei.job_id={job_id}" in headers["baggage"].split(",")
    provision = rows[1]["headers"]["baggage"].split(",")
    assert f"hodei.worker_id={worker_id}" in provision


@pytest.mark.postgres
async def test_an_assignment_not_taken_is_abandoned_with_its_worker_only_until_taken(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        pairs, refs = [], []
        for _ in range(2):
            job_id, worker_id = uuid4(), uuid4()
            await jobs.submit(conn, SubmitJob(command="true"), job_id=job_id,
                              namespace=DEFAULT_NAMESPACE, actor="t")
            ref = workers.WorkerRef(worker_id, "local", job_id)
            await workers.request(conn, ref, mode=WorkerMode.EPHEMERAL, cpus=None,
                                  memory_bytes=None, actor="t")
            assert await workers.register(conn, ref, "host", actor="t") is not None
            pairs.append((job_id, worker_id, 1))
            refs.append(ref)
        assert len(await jobs.assign(conn, pairs, actor="t")) == 2
        (untaken, w1, _), (taken, w2, _) = pairs
        assert await jobs.accept(conn, _report(taken, w2, StatusKind.ACCEPTED), actor="t")

        assert await jobs.abandon(conn, untaken, 1, refs[0], "stopping", actor="t")
        assert not await jobs.abandon(conn, taken, 1, refs[1], "stopping", actor="t")
        assert not await jobs.abandon(conn, untaken, 1, refs[0], "stopping", actor="t")
        states = {r["id"]: r["state"] for r in await conn.fetch(
            "SELECT id, state FROM jobs UNION ALL SELECT id, state FROM workers")}
        trail = [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM domain_events WHERE correlation_id = $1 ORDER BY seq",
            str(untaken))]
        saga = await conn.fetchval("SELECT state FROM sagas WHERE aggregate_id = $1 AND "
                                   "saga_type = 'execution'", untaken)
    assert (states[untaken], states[w1]) == ("CANCELLED", "TERMINATING")
    assert (states[taken], states[w2]) == ("ASSIGNED", "BUSY")
    assert trail[-2:] == ["JobCancelled", "WorkerTerminating"]
    assert saga == "FAILED"


@pytest.mark.postgres
async def test_a_worker_that_can_never_start_fails_with_the_queued_job_it_was_made_for(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        job_id, worker_id = uuid4(), uuid4()
        await jobs.submit(conn, SubmitJob(command="true"), job_id=job_id,
                          namespace=DEFAULT_NAMESPACE, actor="t")
        ref = workers.WorkerRef(worker_id, "kubernetes", job_id)
        await workers.request(conn, ref, mode=WorkerMode.EPHEMERAL, cpus=None,
                              memory_bytes=None, actor="t")
        why = "image not found: hodei-agent:nope"
        assert await workers.cannot_start(conn, ref, why, job_error=why, created=True,
                                          actor="t")
        assert not await workers.cannot_start(conn, ref, why, job_error=why, created=True,
                                              actor="t")
        job = await conn.fetchrow("SELECT state, error, attempt FROM jobs WHERE id = $1",
                                  job_id)
        worker = await conn.fetchrow("SELECT state, error FROM workers WHERE id = $1",
                                     worker_id)
        trail = [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM domain_events WHERE correlation_id = $1 ORDER BY seq",
            str(job_id))]
        # A job no longer QUEUED (cancelled meanwhile) is left as it is.
        other_job, other_worker = uuid4(), uuid4()
        await jobs.submit(conn, SubmitJob(command="true"), job_id=other_job,
                          namespace=DEFAULT_NAMESPACE, actor="t")
        other = workers.WorkerRef(other_worker, "kubernetes", other_job)
        await workers.request(conn, other, mode=WorkerMode.EPHEMERAL, cpus=None,
                              memory_bytes=None, actor="t")
        assert await jobs.cancel_queued(conn, other_job, 1, actor="t") is not None
        assert await workers.cannot_start(conn, other, why, job_error=why, created=False,
                                          actor="t")
        other_state = await conn.fetchval("SELECT state FROM jobs WHERE id = $1", other_job)
    assert tuple(job) == ("FAILED", why, 1)
    assert tuple(worker) == ("FAILED", why)
    assert trail == ["JobCreated", "ProvisionRequested", "WorkerFailed", "JobFailed"]
    assert other_state == "CANCELLED"


@pytest.mark.postgres
async def test_a_resource_status_is_noted_once_per_change_while_the_worker_lives(
    pool: asyncpg.Pool,
) -> None:
    job_id, worker_id = uuid4(), uuid4()
    pod = f"pod hodei-worker-{worker_id}"
    async with pool.acquire() as conn:
        await jobs.submit(conn, SubmitJob(command="true"), job_id=job_id,
                          namespace=DEFAULT_NAMESPACE, actor="t")
        ref = workers.WorkerRef(worker_id, "kubernetes", job_id)
        await workers.request(conn, ref, mode=WorkerMode.EPHEMERAL, cpus=None,
                              memory_bytes=None, actor="t")
        before = await _counts(pool)

        assert await workers.note_status(conn, worker_id, f"{pod} Pending: ContainerCreating")
        first_at = await conn.fetchval(
            "SELECT resource_status_at FROM workers WHERE id = $1", worker_id)
        assert not await workers.note_status(conn, worker_id,
                                             f"{pod}  Pending:\nContainerCreating")
        assert not await workers.note_status(conn, worker_id, " \n ")
        assert await conn.fetchval(
            "SELECT resource_status_at FROM workers WHERE id = $1", worker_id) == first_at
        long = f"{pod} Pending: Unschedulable:\n" + "0/1 nodes are available. " * 20
        assert await workers.note_status(conn, worker_id, long)
        stored = await conn.fetchval("SELECT resource_status FROM workers WHERE id = $1",
                                     worker_id)
        assert len(stored) == workers.MAX_STATUS_CHARS
        assert "\n" not in stored
        assert stored.startswith(f"{pod} Pending: Unschedulable: 0/1 nodes")
        assert stored.endswith("...")

        assert await workers.register(conn, ref, "host", actor="t") is not None
        assert await workers.note_status(conn, worker_id, f"{pod} Running")
        after_register = await _counts(pool)
        await workers.retire(conn, ref, workers.Retirement.WIND_DOWN, "stopping", actor="t")
        assert not await workers.note_status(conn, worker_id, f"{pod} Terminating")
        row = await conn.fetchrow("SELECT state, resource_status FROM workers WHERE id = $1",
                                  worker_id)
        assert not await workers.note_status(conn, uuid4(), "pod elsewhere Pending")
    assert (row["state"], row["resource_status"]) == ("TERMINATING", f"{pod} Running")
    # Noting a status records no event: only registration's two are new.
    assert after_register == (before[0] + 2, before[1] + 2)


@pytest.mark.postgres
async def test_a_beat_taken_before_its_worker_was_destroyed_is_no_sign_of_life(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        worker_id = uuid4()
        ref = workers.WorkerRef(worker_id, "local")
        await workers.request(conn, ref, mode=WorkerMode.EPHEMERAL, cpus=None,
                              memory_bytes=None, actor="t")
        await workers.retire(conn, ref, workers.Retirement.WIND_DOWN, "stopping", actor="t")
        assert await workers.terminate(conn, ref, "stopping", actor="t")
        ended = await conn.fetchval("SELECT terminated_at FROM workers WHERE id = $1",
                                    worker_id)
        # Sent before the end, applied after it (the supervisor flushes beats in batches).
        late = await workers.beat(conn, {worker_id: ended - timedelta(seconds=0.3)})
        after = await workers.beat(conn, {worker_id: ended + timedelta(seconds=0.3)})
    assert late == []
    assert [(r["id"], r["state"]) for r in after] == [(worker_id, "TERMINATED")]
