"""The outbox relay: publishes committed outbox rows to JetStream, in order, exactly once.

The relay works on a connection of its own. It takes its turn (a session advisory lock) in the
statement that reads the oldest unpublished rows, keeps it while batches come back full, and
gives it up in the statement that deletes the last batch's rows: a batch costs two round
trips, and the turn is free whenever the outbox is drained. Any number of relays may run: one
publishes at a time, so the stream keeps commit order. A relay that fails or dies closes its
connection, and its turn goes with the session; the next relay republishes the rows not
deleted and JetStream's duplicate window drops the copies. For that reason the relay's
deletes do not wait for the WAL flush (``synchronous_commit = off`` on its connection): one
lost in a crash only publishes its rows again.
The relay wakes on LISTEN/NOTIFY and polls as a fallback for a lost notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import ClassVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from hodei_common import tracing
from hodei_common.contracts import subjects
from hodei_common.database import LOCK_CLASS, LOCK_OUTBOX_RELAY
from hodei_common.runner import HodeiService, Loop, main_for
from hodei_common.settings import Settings
from hodei_common.waiting import pause, wait_any

log = logging.getLogger(__name__)

# The turn is tried only when a row waits, and the rows are read only when it was ours: rows
# come back exactly when this call took the turn.
_CLAIM = """
WITH turn AS MATERIALIZED (
    SELECT pg_try_advisory_lock($2, $3) AS ours
    WHERE EXISTS (SELECT 1 FROM outbox_events WHERE published_at IS NULL)
)
SELECT id, subject, event_type, payload, headers
FROM outbox_events
WHERE published_at IS NULL AND (SELECT ours FROM turn)
ORDER BY seq
LIMIT $1
"""
# The next batch, the turn already held.
_NEXT = """
SELECT id, subject, event_type, payload, headers
FROM outbox_events WHERE published_at IS NULL ORDER BY seq LIMIT $1
"""
# Without a keep period a published row goes at once: the audit trail is domain_events, and
# the stream holds the event. A delete costs the database less than an update.
_DELETE = "DELETE FROM outbox_events WHERE id = ANY($1::uuid[])"
_MARK = "UPDATE outbox_events SET published_at = now() WHERE id = ANY($1::uuid[])"
# The same, giving the turn up in that statement: the batch was the last for now.
_DELETE_AND_LEAVE = f"""
WITH done AS ({_DELETE} RETURNING 1) SELECT pg_advisory_unlock($2, $3)
"""
_MARK_AND_LEAVE = f"""
WITH done AS ({_MARK} RETURNING 1) SELECT pg_advisory_unlock($2, $3)
"""
_LEAVE = "SELECT pg_advisory_unlock($1, $2)"
# The outbox gauges, at scrape time: the partial index of unpublished rows answers it.
_BACKLOG = """
SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS lag_s
FROM outbox_events WHERE published_at IS NULL
"""
_PURGE = """
DELETE FROM outbox_events
WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)
"""


class RelaySettings(Settings):
    """Relay tuning: ``HODEI_RELAY_BATCH_SIZE`` and friends."""

    relay_batch_size: int = 256
    relay_poll_interval_s: float = 1.0
    relay_publish_timeout_s: float = 5.0
    relay_keep_published_s: float = 0.0  # 0: delete a row once published


class OutboxRelay:
    """Moves outbox rows to JetStream; :meth:`relay_once` is one batch."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        batch_size: int = 256,
        poll_interval_s: float = 1.0,
        publish_timeout_s: float = 5.0,
        keep_published_s: float = 0.0,
    ) -> None:
        self._pool = pool
        self._js = js
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._publish_timeout_s = publish_timeout_s
        self._keep_published_s = keep_published_s
        self._wake = asyncio.Event()
        self._conn: PoolConnectionProxy | None = None
        self._holding = False  # whether this relay's session holds the turn

    async def relay_once(self) -> int:
        """Publish one batch; return how many rows were published (0: nothing, or not our turn).

        On any error the relay's connection is closed, and the turn with it."""
        conn = await self._connection()
        try:
            return await self._batch(conn)
        except BaseException:
            await self.close()
            raise

    async def _batch(self, conn: PoolConnectionProxy) -> int:
        if self._holding:
            rows = await conn.fetch(_NEXT, self._batch_size)
        else:
            rows = await conn.fetch(_CLAIM, self._batch_size, LOCK_CLASS, LOCK_OUTBOX_RELAY)
            self._holding = bool(rows)
        if not rows:
            await self._leave(conn)
            return 0
        published = await self._publish(rows)
        if len(published) < len(rows):
            log.warning("relay: %d of %d events not acknowledged; will retry",
                        len(rows) - len(published), len(rows))
        keep = self._keep_published_s > 0
        if not published:
            await self._leave(conn)
        elif len(published) == self._batch_size:  # more may wait: keep the turn
            await conn.execute(_MARK if keep else _DELETE, published)
        else:
            await conn.fetchval(_MARK_AND_LEAVE if keep else _DELETE_AND_LEAVE, published,
                                LOCK_CLASS, LOCK_OUTBOX_RELAY)
            self._holding = False
        return len(published)

    async def _leave(self, conn: PoolConnectionProxy) -> None:
        if self._holding:
            await conn.fetchval(_LEAVE, LOCK_CLASS, LOCK_OUTBOX_RELAY)
            self._holding = False

    async def _connection(self) -> PoolConnectionProxy:
        """The relay's own connection: its deletes do not wait for the WAL flush, and its
        session holds the turn, so it never goes back to the pool as it is (see close)."""
        if self._conn is None:
            conn = self._conn = await self._pool.acquire()
            try:
                await conn.execute("SET synchronous_commit = off")
                await conn.add_listener(subjects.OUTBOX_NOTIFY_CHANNEL, self.wake)
            except BaseException:
                await self.close()  # not back to the pool with the setting
                raise
        return self._conn

    async def __aenter__(self) -> OutboxRelay:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the relay's connection (its session's turn and setting go with it) and give
        it back to the pool, which opens a fresh one when it needs one."""
        conn, self._conn, self._holding = self._conn, None, False
        if conn is None:
            return
        # A connection that broke went back to the pool by itself: nothing is left to do.
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.terminate()
        await self._pool.release(conn)

    async def _publish(self, rows: list[asyncpg.Record]) -> list[object]:
        """Publish in order without waiting between messages; return the acknowledged ids."""
        futures = []
        for row in rows:
            headers = _traced(row)
            headers[subjects.HEADER_MSG_ID] = str(row["id"])
            headers[subjects.HEADER_EVENT_TYPE] = row["event_type"]
            futures.append(
                await self._js.publish_async(row["subject"], row["payload"], headers=headers)
            )
        done = await asyncio.gather(
            *(asyncio.wait_for(f, self._publish_timeout_s) for f in futures),
            return_exceptions=True,
        )
        acked = []
        for row, result in zip(rows, done, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, (NatsError, TimeoutError, OSError)):
                    raise result
                # Stop at the first failure so the stream never gets a gap in commit order.
                break
            acked.append(row["id"])
        return acked

    def wake(self, *_: object) -> None:
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay until ``stopping`` is set."""
        try:
            failures = 0
            while not stopping.is_set():
                self._wake.clear()
                try:
                    count = await self.relay_once()
                    failures = 0
                except (OSError, NatsError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                    failures += 1
                    log.warning("relay: batch failed (%s); retrying", e)
                    await pause(stopping, min(0.1 * 2**failures, 5.0))
                    continue
                if count >= self._batch_size:
                    continue
                await wait_any(stopping, self._wake, within_s=self._poll_interval_s)
        finally:
            await self.close()

    async def purge_published(self) -> int:
        """Delete rows published longer ago than the keep period (the audit log keeps them),
        and those a relay with a keep period left."""
        result = await self._pool.execute(_PURGE, self._keep_published_s)
        return int(result.split()[-1])


def _traced(row: asyncpg.Record) -> dict[str, str]:
    """A row's headers, its publishing recorded as a span of the trace its writer was in
    (a job's), the message then carrying that span; a row written outside any trace stays
    outside one."""
    headers: dict[str, str] = dict(row["headers"])
    if subjects.HEADER_TRACEPARENT not in headers:
        return headers
    with tracing.message_span("relay", row["subject"], headers, kind=SpanKind.PRODUCER):
        return tracing.inject(headers)


class RelayService(HodeiService):
    """The relay as a service of its own (``hodei service relay``)."""

    name: ClassVar[str] = "relay"
    description: ClassVar[str] = "Publishes the transactional outbox to JetStream"
    settings: RelaySettings

    def __init__(self, settings: RelaySettings) -> None:
        super().__init__(settings)

    async def setup(self) -> None:
        self.relay = OutboxRelay(
            self.pool,
            self.js,
            batch_size=self.settings.relay_batch_size,
            poll_interval_s=self.settings.relay_poll_interval_s,
            publish_timeout_s=self.settings.relay_publish_timeout_s,
            keep_published_s=self.settings.relay_keep_published_s,
        )

    def loops(self) -> list[Loop]:
        return [self._relay_loop, self._purge_loop]

    async def refresh_metrics(self) -> None:
        """The outbox's backlog: the relay's own gauges (every replica reports the same)."""
        row = await self.pool.fetchrow(_BACKLOG)
        assert row is not None
        self.metrics.outbox_unpublished.set(row["n"])
        self.metrics.outbox_lag.set(row["lag_s"])

    async def _relay_loop(self) -> None:
        await self.relay.run(self.stopping)

    async def _purge_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.relay.purge_published()
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("relay: purge failed (%s)", e)
            await pause(self.stopping, 60.0)


def main() -> None:
    main_for(RelaySettings, lambda settings: [RelayService(settings)])


if __name__ == "__main__":
    main()
