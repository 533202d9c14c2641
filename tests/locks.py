"""Helpers of the tests of periodic passes that replicas take turns at under an advisory lock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import asyncpg

from hodei_common.database import LOCK_CLASS
from hodei_common.testing import assert_eventually

T = TypeVar("T")

# How the replica holding the lock stops mid-pass: its pass raises, or it dies (PostgreSQL
# loses its session and it runs nothing more).
Ending = Literal["errs", "dies"]
ENDINGS: list[Ending] = ["errs", "dies"]

LOCK_HOLDER = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND classid::bigint = $1 AND objid::bigint = $2
  AND objsubid = 2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def lock_holder(pool: asyncpg.Pool, key: int) -> int | None:
    """The server pid of the session holding Hodei's advisory lock ``key``, if any."""
    pid = await pool.fetchval(LOCK_HOLDER, LOCK_CLASS, key)
    return int(pid) if pid is not None else None


class Gate:
    """A point a pass reaches and waits at until the test lets it go on, or fail there."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._opened = asyncio.Event()
        self._error: BaseException | None = None

    async def wait(self) -> None:
        self.reached.set()
        await self._opened.wait()
        if self._error is not None:
            raise self._error

    def open(self) -> None:
        self._opened.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._opened.set()


async def end_mid_pass(ending: Ending, task: asyncio.Task[Any], gate: Gate,
                       error: BaseException, pool: asyncpg.Pool, key: int) -> None:
    """End the pass ``task`` runs while it waits at ``gate`` holding lock ``key``: it raises
    ``error`` there, or its replica dies (its session ends, and it runs nothing more)."""
    await asyncio.wait_for(gate.reached.wait(), 10)
    if ending == "errs":
        gate.fail(error)
        with contextlib.suppress(type(error)):
            await task
        assert task.done()
        return
    pid = await lock_holder(pool, key)
    assert pid is not None, "the pass does not hold the lock"
    assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, asyncpg.InterfaceError,
                             asyncpg.PostgresError):
        await task


async def next_turn(run_pass: Callable[[], Awaitable[T | None]], within_s: float = 10.0) -> T:
    """Run passes until one is not skipped (returns something else than None); its result."""
    results: list[T] = []

    async def one() -> bool:
        outcome = await run_pass()
        if outcome is not None:
            results.append(outcome)
        return bool(results)

    await assert_eventually(one, within_s=within_s, message="no pass took its turn")
    return results[0]
