"""The outbox: state and event in one transaction; the relay publishes each event once, in order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from hodei_common import tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobCancelled
from hodei_common.database import LOCK_CLASS, LOCK_OUTBOX_RELAY, Conn
from hodei_common.lifecycle import events
from hodei_common.lifecycle.transitions import JOBS
from hodei_common.relay import OutboxRelay
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_common.testing.plugin import platform_env

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


def make_event(attempt: int = 1) -> JobCancelled:
    return JobCancelled(
        event_id=uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        job_id=uuid.uuid4(),
        attempt=attempt,
        reason="test",
    )


async def record(conn: Conn, *recorded: JobCancelled, applied: tuple[str, ...] = ("cancel",)
                 ) -> int:
    """Record events as a transition's statement does: those of the steps that applied."""
    emits = [events.Emit(JOBS["cancel"], e, step=f"cancel{'' if i % 2 == 0 else '-other'}")
             for i, e in enumerate(recorded)]
    count: int = await conn.fetchval("SELECT hodei_record_events($1, $2)",
                                     events.encode(emits), list(applied))
    return count


async def write_events(pool: asyncpg.Pool, count: int, per_tx: int = 100) -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    for start in range(0, count, per_tx):
        async with pool.acquire() as conn, conn.transaction():
            for i in range(start, min(count, start + per_tx)):
                event = make_event(attempt=i + 1)
                await record(conn, event)
                ids.append(event.event_id)
    return ids


async def stream_ids(js: JetStreamContext) -> list[str]:
    """Every Nats-Msg-Id in JOB_EVENTS, in stream order."""
    info = await js.stream_info(subjects.JOB_EVENTS_STREAM)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.JOB_EVENTS_STREAM, seq)
        assert msg.headers is not None
        ids.append(msg.headers[subjects.HEADER_MSG_ID])
    return ids


async def stream_count(js: JetStreamContext) -> int:
    return int((await js.stream_info(subjects.JOB_EVENTS_STREAM)).state.messages)


@pytest.fixture
async def relays() -> AsyncIterator[list[asyncio.Task[None]]]:
    """Relay tasks a test starts; cancelled at the end."""
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_events_are_recorded_with_the_statement_that_applies_them(
    pool: asyncpg.Pool,
) -> None:
    event, skipped = make_event(), make_event()
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        assert await record(conn, event) == 1
        await tx.rollback()
        assert await conn.fetchval("SELECT count(*) FROM outbox_events") == 0
        assert await conn.fetchval("SELECT count(*) FROM domain_events") == 0
        # The second event belongs to a step that did not apply: it is not recorded.
        assert await record(conn, event, skipped) == 1
        audit = await conn.fetchrow("SELECT * FROM domain_events")
        assert audit["event_type"] == "JobCancelled"
        assert audit["aggregate_id"] == event.job_id
        assert audit["payload"]["reason"] == "test"
        row = await conn.fetchrow("SELECT * FROM outbox_events")
        assert row["id"] == event.event_id
        assert row["subject"] == subjects.job_event(event.job_id, subjects.JOB_CANCELLED)
        assert row["published_at"] is None
        assert msgspec.json.decode(row["payload"], type=JobCancelled) == event
        assert await conn.fetchval("SELECT count(*) FROM domain_events") == 1


async def test_relay_publishes_in_commit_order_with_event_id_as_msg_id(
    pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    ids = await write_events(pool, 600)
    async with OutboxRelay(pool, js, batch_size=128) as relay:
        while await relay.relay_once():
            pass
    assert await stream_ids(js) == [str(i) for i in ids]
    assert await pool.fetchval("SELECT count(*) FROM outbox_events WHERE published_at IS NULL") == 0


async def test_a_published_row_is_deleted_unless_a_keep_period_is_set(
    pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    await write_events(pool, 3)
    async with OutboxRelay(pool, js) as relay:
        await relay.relay_once()
    assert await pool.fetchval("SELECT count(*) FROM outbox_events") == 0
    assert await pool.fetchval("SELECT count(*) FROM domain_events") == 3  # the audit stays
    await write_events(pool, 2)
    async with OutboxRelay(pool, js, keep_published_s=60) as relay:
        await relay.relay_once()
    kept = await pool.fetch("SELECT published_at FROM outbox_events")
    assert len(kept) == 2
    assert all(row["published_at"] is not None for row in kept)
    assert await stream_count(js) == 5


async def turn_free(pool: asyncpg.Pool) -> bool:
    """Whether another session could take the relay's turn now (it gives it back at once)."""
    async with pool.acquire() as conn:
        taken = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS,
                                    LOCK_OUTBOX_RELAY)
        if taken:
            await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS,
                                LOCK_OUTBOX_RELAY)
        return bool(taken)


async def test_relay_keeps_its_turn_while_batches_are_full_and_leaves_it_when_drained(
    pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    await write_events(pool, 5)
    async with OutboxRelay(pool, js, batch_size=2) as relay:
        assert await turn_free(pool)
        assert await relay.relay_once() == 2
        assert not await turn_free(pool)  # a full batch: more may wait
        assert await relay.relay_once() == 2
        assert not await turn_free(pool)
        assert await relay.relay_once() == 1
        assert await turn_free(pool)  # drained: the turn is free again
        assert await relay.relay_once() == 0
        assert await turn_free(pool)  # nothing waited: the turn was not even taken
    assert await stream_count(js) == 5


async def test_relay_publishes_nothing_while_another_session_holds_its_turn(
    pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    await write_events(pool, 3)
    async with pool.acquire() as holder, OutboxRelay(pool, js) as relay:
        await holder.execute("SELECT pg_advisory_lock($1, $2)", LOCK_CLASS, LOCK_OUTBOX_RELAY)
        try:
            assert await relay.relay_once() == 0
            assert await stream_count(js) == 0
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS,
                                 LOCK_OUTBOX_RELAY)
        assert await relay.relay_once() == 3
    assert await pool.fetchval("SELECT count(*) FROM outbox_events") == 0


async def test_a_batch_is_two_statements_and_its_delete_does_not_wait_for_the_flush(
    pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    statements: list[str] = []
    async with OutboxRelay(pool, js) as relay:
        await write_events(pool, 1)
        assert await relay.relay_once() == 1  # the connection has learnt its types
        conn = await relay._connection()
        assert await conn.fetchval("SHOW synchronous_commit") == "off"
        await write_events(pool, 3, per_tx=1)
        conn.add_query_logger(lambda record: statements.append(record.query))
        assert await relay.relay_once() == 3
        await asyncio.sleep(0.1)  # the logger hears of a query after it ran
    assert len(statements) == 2, statements  # read and take the turn; delete and leave it
    assert await stream_count(js) == 4


async def test_relay_wakes_on_notify_without_waiting_for_the_poll(
    pool: asyncpg.Pool, js: JetStreamContext, relays: list[asyncio.Task[None]]
) -> None:
    stopping = asyncio.Event()
    relay = OutboxRelay(pool, js, poll_interval_s=3600.0)
    relays.append(asyncio.create_task(relay.run(stopping)))
    await asyncio.sleep(0.2)  # let the first (empty) pass finish and the relay sleep
    await write_events(pool, 1)
    await assert_eventually(lambda: stream_count(js), within_s=5.0)


async def test_published_event_continues_the_writers_trace(
    pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    tracing.setup_tracing("test")
    with tracing.tracer().start_as_current_span("submit") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        await write_events(pool, 1)
    async with OutboxRelay(pool, js) as relay:
        await relay.relay_once()
    msg = await js.get_msg(subjects.JOB_EVENTS_STREAM, 1)
    assert msg.headers is not None
    assert msg.headers[subjects.HEADER_TRACEPARENT].split("-")[1] == trace_id


async def test_relay_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    ids = await write_events(pool, 300)

    class DiesMidBatch(OutboxRelay):
        async def _publish(self, rows: list[asyncpg.Record]) -> list[object]:
            await super()._publish(rows[: len(rows) // 2])
            raise ConnectionError("relay process died")

    with pytest.raises(ConnectionError):
        await DiesMidBatch(pool, js, batch_size=100).relay_once()
    assert await stream_count(js) == 50  # half the batch reached the stream, none marked
    unpublished = "SELECT count(*) FROM outbox_events WHERE published_at IS NULL"
    assert await pool.fetchval(unpublished) == 300
    async with OutboxRelay(pool, js, batch_size=100) as relay:
        while await relay.relay_once():
            pass
    assert await stream_ids(js) == [str(i) for i in ids]


@pytest.mark.slow
async def test_three_relay_processes_racing_one_killed_publish_every_event_once(
    settings: Settings, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    total = 6000
    env = {
        **os.environ,
        **platform_env(settings),
        "HODEI_RELAY_BATCH_SIZE": "50",
    }
    procs = [
        subprocess.Popen([sys.executable, "-m", "hodei_common.relay"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(3)
    ]
    try:
        writer = asyncio.create_task(write_events(pool, total, per_tx=20))
        await assert_eventually(lambda: stream_count(js), within_s=30.0)
        procs[0].send_signal(signal.SIGKILL)
        ids = await writer

        async def all_published() -> bool:
            return await stream_count(js) >= total

        await assert_eventually(all_published, within_s=60.0)
        await asyncio.sleep(0.5)  # a late duplicate would show up in the count now
        assert await stream_ids(js) == [str(i) for i in ids]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=20)
    assert [p.returncode for p in procs[1:]] == [0, 0]
