"""A dispatch pass reads the queue in the order jobs are served, and only as far as could change
what it does: its cost does not grow with the length of the queue."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.lifecycle import jobs
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_common.testing.services import running
from hodei_scheduler import store
from hodei_scheduler.config import SchedulerSettings
from hodei_scheduler.service import SchedulerService
from tests.api.helpers import idle_worker, job

pytestmark = [pytest.mark.postgres]

QUEUE = 300


async def queue(pool: asyncpg.Pool, n: int, **limits: Any) -> list[uuid.UUID]:
    """``n`` QUEUED jobs of the local provider, stored as the api stores them."""
    new = [jobs.new_job(job(f"echo {i}", **limits), job_id=uuid.uuid4(),
                        namespace=DEFAULT_NAMESPACE, actor="api", assign_now=False)
           for i in range(n)]
    async with pool.acquire() as conn:
        rows = await jobs.submit_many(conn, new, assign_now=False)
    return [r["id"] for r in rows]


async def jobs_read(pool: asyncpg.Pool, sql: str, *args: object) -> int:
    """How many rows of ``jobs`` the statement read from its queue scans, as executed."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ANALYZE jobs")
        plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))
    scans = [node for node in nodes(plan[0]["Plan"]) if node.get("Relation Name") == "jobs"
             and node.get("Index Name") != "jobs_pkey"]
    assert scans, "the statement reads the queue"
    return sum(int(n["Actual Rows"]) * int(n["Actual Loops"]) for n in scans)


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def creating(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT for_job_id, cpus FROM workers WHERE state = 'CREATING'")


async def test_a_full_provider_has_none_of_its_queue_read_to_count_demand(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute("UPDATE provider_configs SET max_workers = 0 WHERE name = 'local'")
    await queue(pool, QUEUE)
    assert await jobs_read(pool, store.PROVIDER_DEMAND) == 0
    demand = await pool.fetch(store.PROVIDER_DEMAND)
    assert [(d["name"], d["queued"]) for d in demand] == [("local", 0)]


async def test_demand_reads_no_more_jobs_than_room_and_spare_workers_could_take(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute("UPDATE provider_configs SET max_workers = 5 WHERE name = 'local'")
    await idle_worker(pool)  # room 4, one worker idle
    await queue(pool, QUEUE)
    assert await jobs_read(pool, store.PROVIDER_DEMAND) == 5
    demand = await pool.fetch(store.PROVIDER_DEMAND)
    assert [(d["queued"], d["ready"], d["active"]) for d in demand] == [(5, 1, 1)]


async def test_pairing_reads_no_more_of_the_queue_than_one_batch(pool: asyncpg.Pool) -> None:
    await queue(pool, QUEUE)
    worker = await idle_worker(pool)
    assert await jobs_read(pool, store.PICK_PAIRS, 64) <= 64
    async with pool.acquire() as conn, conn.transaction():
        pairs = await store.pick_pairs(conn, 64)
    first = await pool.fetchval("SELECT id FROM jobs WHERE state = 'QUEUED' "
                                "ORDER BY priority DESC, queued_at, id LIMIT 1")
    assert [(p["job_id"], p["worker_id"], p["considered"]) for p in pairs] == [
        (first, worker, 64)]


async def test_room_for_one_worker_goes_to_the_class_whose_job_comes_first_in_the_queue(
    settings: Settings, pool: asyncpg.Pool,
) -> None:
    await pool.execute("UPDATE provider_configs SET max_workers = 0 WHERE name = 'local'")
    await queue(pool, 3)  # waiting longest, default limits
    urgent = await queue(pool, 1, cpus=0.5, priority=10)
    scheduler = SchedulerService(SchedulerSettings(**settings.model_dump(),
                                                   dispatch_interval_s=0.1))
    async with running([scheduler]):
        await pool.execute("UPDATE provider_configs SET max_workers = 1 WHERE name = 'local'")
        made = await assert_eventually(lambda: creating(pool))
    assert [(w["for_job_id"], w["cpus"]) for w in made] == [(urgent[0], 0.5)]
