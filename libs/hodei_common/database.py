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

# Advisory locks are (class, object) pairs; one class for Hodei so keys never collide.
LOCK_CLASS = 0x484F4445  # "HODE"
LOCK_MIGRATIONS = 1
LOCK_OUTBOX_RELAY = 2
LOCK_DISPATCH = 3
LOCK_RECONCILE = 4
LOCK_LOG_SWEEP = 5


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb travels as Python objects, not strings.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's session reset (one more round trip per release).

    asyncpg still rolls back an open transaction and drops listeners on release; Hodei never
    leaves other session state on a pooled connection: advisory locks are transaction-scoped,
    LISTEN is removed by its owner, and no code sets session variables.
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
    await conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, {int(key)})")
    try:
        yield
    except BaseException:
        # A broken connection is rolled back by the server, and by the pool on release.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
