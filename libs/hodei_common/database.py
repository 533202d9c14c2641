"""PostgreSQL access: the asyncpg pool and the advisory-lock keys Hodei uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from hodei_common.errors import UnavailableError
from hodei_common.settings import Settings

log = logging.getLogger(__name__)

# A plain connection or one borrowed from a pool: store functions take either.
Conn = asyncpg.Connection | PoolConnectionProxy

# How long a pooled connection keeps a prepared statement, and so its plan: PostgreSQL plans a
# statement once for good after its first executions, with the tables as they are then. On a
# new database that plan is made while the tables are empty (a sequential scan of `jobs`
# looks cheapest) and asyncpg would keep it 300 s while `jobs` grows; prepared again every
# 10 s, a plan follows the tables (seen: the dispatch pass's `assign` reading all of `jobs`,
# 3 to 6 ms a call, for the first minute of a new platform under load).
STATEMENT_LIFETIME_S = 10

# Advisory locks are (class, object) pairs; one class for Hodei so keys never collide.
LOCK_CLASS = 0x484F4445  # "HODE"
LOCK_MIGRATIONS = 1
LOCK_OUTBOX_RELAY = 2
LOCK_DISPATCH = 3
LOCK_RECONCILE = 4
LOCK_LOG_SWEEP = 5
LOCK_SUPERVISOR_SWEEP = 6


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb travels as Python objects, not strings.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's session reset (one more round trip per release).

    asyncpg still rolls back an open transaction and drops listeners on release; Hodei never
    leaves other session state on a pooled connection: advisory locks on pooled connections
    are transaction-scoped (:func:`locked_transaction`, :func:`exclusive`); the migration
    runner takes a session lock on a connection of its own, and the relay, which takes one
    and sets ``synchronous_commit`` on the pooled connection it keeps, closes that connection
    before handing it back; LISTEN is removed by its owner.
    """


async def create_pool(
    settings: Settings,
    *,
    dsn: str | None = None,
    initial_attempts: int | None = None,
    **kwargs: Any,
) -> asyncpg.Pool:
    """Open a pool, retrying while PostgreSQL is not up yet (forever unless told otherwise)."""
    url = dsn or settings.resolved_database_url()
    attempt = 0
    while True:
        attempt += 1
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=settings.db_pool_min,
                max_size=settings.db_pool_max,
                init=_init_connection,
                reset=_keep_session,
                max_cached_statement_lifetime=STATEMENT_LIFETIME_S,
                **kwargs,
            )
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError) as e:
            if initial_attempts is not None and attempt >= initial_attempts:
                raise UnavailableError(f"cannot reach PostgreSQL: {e}") from e
            log.warning("postgres not reachable yet (%s); retrying", e)
            await asyncio.sleep(min(0.2 * attempt, 2.0))
        else:
            assert pool is not None
            return pool


async def connect(settings: Settings, *, dsn: str | None = None) -> asyncpg.Connection:
    """One plain connection (migrations, LISTEN)."""
    conn = await asyncpg.connect(dsn or settings.resolved_database_url())
    await _init_connection(conn)
    return conn


@contextlib.asynccontextmanager
async def locked_transaction(conn: Conn, key: int) -> AsyncIterator[None]:
    """A transaction that holds Hodei's advisory lock ``key`` until it ends, begun with the
    lock in one round trip (one simple query)."""
    async with _begun(conn, f"BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, {int(key)})"):
        yield


@contextlib.asynccontextmanager
async def exclusive(pool: asyncpg.Pool, key: int) -> AsyncIterator[bool]:
    """Hold Hodei's advisory lock ``key`` for the block unless another session holds it;
    yields whether this one does (a periodic pass then runs, else it skips its turn).

    The lock is transaction-scoped, on a pooled connection that keeps a transaction open for
    the block and does nothing else; the block's own statements use other connections. That
    transaction has no transaction id, no row lock and no snapshot (the lock is taken by a
    simple query, which leaves no portal open), so it holds back neither writers nor vacuum,
    and a pass may take its time (a provider's slow HTTP calls). No unlock can be missed:
    the lock goes with the transaction, which ends with the block, on any error or
    cancellation (rolled back here, or by the pool on release), and when the connection or
    the process dies.
    """
    async with pool.acquire() as conn, _begun(
        conn, f"BEGIN; SELECT 1 WHERE pg_try_advisory_xact_lock({LOCK_CLASS}, {int(key)})"
    ) as status:
        yield status == "SELECT 1"  # a row only when the lock was free


@contextlib.asynccontextmanager
async def _begun(conn: Conn, begin: str) -> AsyncIterator[str]:
    """A transaction begun by the simple query ``begin`` (``BEGIN; ...``, one round trip),
    yielding its status; committed when the block ends, rolled back when it fails."""
    try:
        status = await conn.execute(begin)
        yield status
    except BaseException:
        # A broken connection's transaction ends with its session (the server's), and the
        # pool terminates a connection it cannot reset.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError,
                                 asyncpg.InternalClientError, OSError):
            await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
