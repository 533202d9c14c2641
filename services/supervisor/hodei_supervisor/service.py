"""The supervisor service: records every worker's latest heartbeat, in batches.

Agents beat on core NATS every couple of seconds; the supervisor keeps only the newest beat
per worker in memory and writes them all in one statement per flush, so a thousand workers
cost one UPDATE a second, not a thousand. Replicas share the beats through a queue group.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import ClassVar
from uuid import UUID

import asyncpg
import msgspec
from nats.aio.msg import Msg

from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Heartbeat
from hodei_common.runner import HodeiService, Loop
from hodei_common.waiting import pause
from hodei_supervisor import store
from hodei_supervisor.config import SupervisorSettings

log = logging.getLogger(__name__)

HEARTBEAT_QUEUE_GROUP = "hodei-supervisor"


class SupervisorService(HodeiService):
    """Watches workers; today: their heartbeats."""

    name: ClassVar[str] = "supervisor"
    description: ClassVar[str] = "Hodei supervisor: worker heartbeats"

    def __init__(self, settings: SupervisorSettings) -> None:
        super().__init__(settings)
        self.config = settings
        self._beats: dict[UUID, datetime] = {}

    async def setup(self) -> None:
        self._sub = await self.nc.subscribe(subjects.WORKER_HEARTBEATS,
                                            queue=HEARTBEAT_QUEUE_GROUP, cb=self._on_beat)

    async def stop_fetching(self) -> None:
        await self._sub.unsubscribe()

    def loops(self) -> list[Loop]:
        return [self._flush_loop]

    async def _on_beat(self, msg: Msg) -> None:
        try:
            beat = msgspec.json.decode(msg.data, type=Heartbeat)
        except msgspec.DecodeError:
            log.warning("ignored an undecodable heartbeat on %s", msg.subject)
            return
        if msg.subject != subjects.worker_heartbeat(beat.worker_id):
            log.warning("ignored a heartbeat for worker %s on %s", beat.worker_id, msg.subject)
            return
        known = self._beats.get(beat.worker_id)
        if known is None or beat.at > known:
            self._beats[beat.worker_id] = beat.at

    async def flush(self) -> int:
        """Write the gathered beats; on failure they are kept for the next flush."""
        beats, self._beats = self._beats, {}
        if not beats:
            return 0
        try:
            async with self.pool.acquire() as conn:
                await store.record_heartbeats(conn, beats)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            log.warning("could not record %d heartbeats (%s); keeping them", len(beats), e)
            for worker_id, at in beats.items():
                self._beats.setdefault(worker_id, at)
            return 0
        return len(beats)

    async def _flush_loop(self) -> None:
        while not self.stopping.is_set():
            await pause(self.stopping, self.config.heartbeat_flush_s)
            await self.flush()
