"""Advisory locks for periodic passes: one holder at a time, and never left held."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from hodei_common import database
from hodei_common.settings import Settings
from tests.locks import ENDINGS, Ending, Gate, end_mid_pass, lock_holder, next_turn

pytestmark = pytest.mark.postgres

KEY = 99


@pytest.fixture
async def other_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A second replica's pool on the same database."""
    p = await database.create_pool(settings, initial_attempts=1)
    try:
        yield p
    finally:
        await p.close()


async def held_pass(pool: asyncpg.Pool, gate: Gate) -> bool | None:
    """A pass that waits at ``gate`` once it holds the lock; None when skipped."""
    async with database.exclusive(pool, KEY) as mine:
        if not mine:
            return None
        await gate.wait()
        return True


async def quick_pass(pool: asyncpg.Pool) -> bool | None:
    async with database.exclusive(pool, KEY) as mine:
        return True if mine else None


async def test_one_replica_holds_the_lock_at_a_time_and_it_goes_with_the_pass(
    pool: asyncpg.Pool, other_pool: asyncpg.Pool,
) -> None:
    gate = Gate()
    first = asyncio.create_task(held_pass(pool, gate))
    await asyncio.wait_for(gate.reached.wait(), 10)
    assert await quick_pass(other_pool) is None
    gate.open()
    assert await first is True
    assert await quick_pass(other_pool) is True
    assert await lock_holder(pool, KEY) is None


@pytest.mark.parametrize("ending", ENDINGS)
async def test_a_replica_that_errs_or_dies_mid_pass_leaves_the_lock_free(
    pool: asyncpg.Pool, other_pool: asyncpg.Pool, ending: Ending,
) -> None:
    gate = Gate()
    first = asyncio.create_task(held_pass(pool, gate))
    await end_mid_pass(ending, first, gate, RuntimeError("the pass failed"), pool, KEY)
    assert await next_turn(lambda: quick_pass(other_pool)) is True


async def test_a_cancelled_pass_leaves_the_lock_free(
    pool: asyncpg.Pool, other_pool: asyncpg.Pool,
) -> None:
    gate = Gate()
    first = asyncio.create_task(held_pass(pool, gate))
    await asyncio.wait_for(gate.reached.wait(), 10)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert await lock_holder(pool, KEY) is None
    assert await quick_pass(other_pool) is True


async def test_a_long_pass_holds_back_neither_vacuum_nor_writers(pool: asyncpg.Pool) -> None:
    gate = Gate()
    held = asyncio.create_task(held_pass(pool, gate))
    await asyncio.wait_for(gate.reached.wait(), 10)
    try:
        pid = await lock_holder(pool, KEY)
        row = await pool.fetchrow(
            "SELECT state, backend_xid, backend_xmin FROM pg_stat_activity WHERE pid = $1", pid)
        assert row is not None
        # Idle in a transaction that has no transaction id and no snapshot: vacuum's horizon
        # and other sessions' row locks are not its concern.
        assert (row["state"], row["backend_xid"], row["backend_xmin"]) == (
            "idle in transaction", None, None)
        assert await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype NOT IN "
            "('advisory', 'virtualxid')", pid) == 0
    finally:
        gate.open()
    assert await held is True
