"""The migration runner: idempotent, checksum-guarded, serialised, and enforced at start."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from hodei_common import database
from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobCreated
from hodei_common.contracts.workers import WorkerReady
from hodei_common.errors import MigrationError, SchemaError
from hodei_common.relay import OutboxRelay
from hodei_common.settings import Settings
from hodei_migrations import check_schema, load_migrations, migrate, required_version
from hodei_migrations.runner import SQL_DIR

pytestmark = pytest.mark.postgres

TABLES = {
    "jobs", "workers", "worker_bootstrap_tokens", "provider_configs", "outbox_events",
    "domain_events", "job_log_files", "sagas", "saga_steps", "saga_step_history",
    "platform_settings", "schema_migrations", "schema_routines",
}


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    target = tmp_path / "sql"
    shutil.copytree(SQL_DIR, target)
    return target


async def test_migrate_creates_every_table_with_uuid_keys_and_timestamps(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await migrate(conn)
        assert [m.version for m in applied] == [m.version for m in load_migrations()]
        rows = await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        )
        columns: dict[str, dict[str, str]] = {}
        for r in rows:
            columns.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
        assert set(columns) == TABLES
        for table, cols in columns.items():
            assert cols["created_at"] == "timestamp with time zone", table
            assert cols["updated_at"] == "timestamp with time zone", table
            if table not in ("schema_migrations", "schema_routines"):
                assert cols["id"] == "uuid", table
            for name, kind in cols.items():
                assert kind != "timestamp without time zone", (table, name)
        nullable = await conn.fetchval(
            "SELECT is_nullable FROM information_schema.columns "
            "WHERE table_name = 'workers' AND column_name = 'last_heartbeat'"
        )
        assert nullable == "YES"
        assert (columns["workers"]["resource_status"],
                columns["workers"]["resource_status_at"]) == ("text", "timestamp with time zone")
        listing = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'jobs_namespace_state_created_idx'")
        assert "(namespace, state, created_at DESC)" in listing
        providers = await conn.fetch("SELECT name, enabled FROM provider_configs ORDER BY name")
        assert [(p["name"], p["enabled"]) for p in providers] == [
            ("docker", False), ("kubernetes", False), ("local", True)
        ]
    finally:
        await conn.close()


async def test_migrate_twice_applies_nothing_the_second_time(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await migrate(conn)
        assert await migrate(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(
            load_migrations()
        )
    finally:
        await conn.close()


async def test_edited_applied_migration_is_refused(empty_database_url: str, sql_copy: Path) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, sql_copy)
        first = sorted(sql_copy.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, sql_copy)
    finally:
        await conn.close()


async def test_concurrent_runners_apply_each_migration_once(empty_database_url: str) -> None:
    conns = [await asyncpg.connect(empty_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 0, len(load_migrations())]
    finally:
        for c in conns:
            await c.close()


async def test_failed_migration_leaves_nothing_half_applied(
    empty_database_url: str, sql_copy: Path
) -> None:
    (sql_copy / "9999_broken.sql").write_text(
        "CREATE TABLE half_done (id uuid PRIMARY KEY);\nSELECT no_such_function();\n"
    )
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(MigrationError, match="9999_broken failed"):
            await migrate(conn, sql_copy)
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == (
            required_version()
        )
    finally:
        await conn.close()


async def test_schema_check_refuses_an_older_schema_with_one_line(
    empty_database_url: str, sql_copy: Path
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(SchemaError, match="no Hodei schema"):
            await check_schema(conn)
        await migrate(conn)
        (sql_copy / "9999_future.sql").write_text("SELECT 1;\n")
        with pytest.raises(SchemaError) as info:
            await check_schema(conn, sql_copy)
        message = str(info.value)
        assert "\n" not in message
        assert "needs 9999" in message
        assert "hodei migrate" in message
        assert await check_schema(conn) == required_version()
    finally:
        await conn.close()


def test_badly_named_migration_file_is_refused(sql_copy: Path) -> None:
    (sql_copy / "2_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_snake_case"):
        load_migrations(sql_copy)


# Job events' subjects before they named their job (migration 0014 rewrites them).
OLD_JOB_CREATED = "job.created"


@pytest.mark.nats
async def test_an_unpublished_job_event_on_its_old_subject_is_given_its_jobs_then_relayed(
    empty_database_url: str, sql_copy: Path, js: JetStreamContext, settings: Settings
) -> None:
    (sql_copy / "0014_job_event_subjects.sql").unlink()
    now = datetime.now(UTC)
    job_id = uuid4()
    waiting, sent = (JobCreated(event_id=uuid4(), occurred_at=now, job_id=job_id, attempt=1,
                                namespace="default", name="n", provider="local", priority=0,
                                timeout_s=1.0) for _ in range(2))
    ready = WorkerReady(event_id=uuid4(), occurred_at=now, worker_id=uuid4(), provider="local")
    rows = [(waiting.event_id, OLD_JOB_CREATED, "JobCreated", msgspec.json.encode(waiting), None),
            (sent.event_id, OLD_JOB_CREATED, "JobCreated", msgspec.json.encode(sent), now),
            (ready.event_id, subjects.WORKER_READY, "WorkerReady", msgspec.json.encode(ready),
             None)]
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, sql_copy)  # a deployment of the version before
        await conn.executemany("INSERT INTO outbox_events (id, subject, event_type, payload, "
                               "published_at) VALUES ($1, $2, $3, $4, $5)", rows)
        await migrate(conn)
        found = dict(await conn.fetch("SELECT id, subject FROM outbox_events"))
    finally:
        await conn.close()
    assert found == {waiting.event_id: subjects.job_event(job_id, subjects.JOB_CREATED),
                     sent.event_id: OLD_JOB_CREATED,  # published: history, left alone
                     ready.event_id: subjects.WORKER_READY}

    pool = await database.create_pool(settings, dsn=empty_database_url, initial_attempts=1)
    try:
        async with OutboxRelay(pool, js) as relay:
            assert await relay.relay_once() == 2
    finally:
        await pool.close()
    msg = await js.get_last_msg(subjects.JOB_EVENTS_STREAM,
                                subjects.job_event(job_id, subjects.JOB_CREATED))
    assert msg.headers is not None
    assert msg.headers[subjects.HEADER_MSG_ID] == str(waiting.event_id)
    assert msgspec.json.decode(msg.data, type=JobCreated) == waiting
