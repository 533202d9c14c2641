"""The supervisor service: records heartbeats in batches and recovers lost workers.

Agents beat on core NATS every second; the supervisor keeps only the newest beat per worker
in memory and writes them all in one statement per flush, so a thousand workers cost one
UPDATE per flush, not a thousand. Replicas share the beats through a queue group. After
each flush that succeeded it sweeps (:mod:`hodei_supervisor.sweeps`): a worker silent for
longer than its grace is lost, its job requeued. A beat from a worker that should be silent
(declared dead, finished, unknown) gets a STOP order back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar
from uuid import UUID

import asyncpg
import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Heartbeat
from hodei_common.contracts.workers import WorkerState
from hodei_common.lifecycle import workers
from hodei_common.recovery import Backoff, Recovery, send_stop
from hodei_common.runner import HodeiService, Loop
from hodei_common.waiting import pause
from hodei_supervisor import store
from hodei_supervisor.config import SupervisorSettings
from hodei_supervisor.sweeps import Sweeper

log = logging.getLogger(__name__)

ACTOR = "supervisor"

HEARTBEAT_QUEUE_GROUP = "hodei-supervisor"
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class SupervisorService(HodeiService):
    """Watches workers: their heartbeats, and what to do when they go silent."""

    name: ClassVar[str] = "supervisor"
    description: ClassVar[str] = "Hodei supervisor: heartbeats and failure recovery"
    settings: SupervisorSettings

    def __init__(self, settings: SupervisorSettings) -> None:
        super().__init__(settings)
        self._beats: dict[UUID, Heartbeat] = {}
        # Silence is judged only once the supervisor has listened a whole grace period
        # without a break: beats sent while it (or its NATS link) was down were never heard.
        self._listening_since = 0.0

    async def setup(self) -> None:
        self.recovery = Recovery(self.pool, self.nc, actor=ACTOR,
                                 backoff=Backoff.from_settings(self.settings),
                                 metrics=self.metrics)
        self.sweeper = Sweeper(self.pool, self.nc, self.recovery, self.settings,
                               heartbeat_interval_s=self.platform.heartbeat_interval_s)
        self._listening_since = asyncio.get_running_loop().time()
        self._sub = await self.nc.subscribe(subjects.WORKER_HEARTBEATS,
                                            queue=HEARTBEAT_QUEUE_GROUP, cb=self._on_beat)

    async def stop_fetching(self) -> None:
        await self._sub.unsubscribe()

    async def refresh_metrics(self) -> None:
        """Queued jobs and live workers, in one query per scrape: the supervisor watches
        workers, so these gauges are its (every replica reports the same values)."""
        await super().refresh_metrics()
        async with self.pool.acquire() as conn:
            rows = await store.platform_state(conn)
        for row in rows:
            if row["provider"] is None:
                self.metrics.jobs_queued.set(row["n"])
            else:
                self.metrics.workers.labels(row["provider"], row["state"]).set(row["n"])

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
        if known is None or beat.at > known.at:
            self._beats[beat.worker_id] = beat

    async def flush(self) -> bool:
        """Write the gathered beats; on failure they are kept for the next flush."""
        beats, self._beats = self._beats, {}
        if not beats:
            return True
        try:
            async with self.pool.acquire() as conn:
                silenced = await workers.beat(
                    conn, {worker_id: beat.at for worker_id, beat in beats.items()})
        except _DB_ERRORS as e:
            log.warning("could not record %d heartbeats (%s); keeping them", len(beats), e)
            for worker_id, beat in beats.items():
                self._beats.setdefault(worker_id, beat)
            return False
        for row in silenced:
            await self._stop_zombie(row, beats[row["id"]])
        return True

    async def _stop_zombie(self, row: asyncpg.Record, beat: Heartbeat) -> None:
        """A worker that should be silent beat: tell it to stop (each time, as core NATS may
        lose the order) and record the first time."""
        state = row["state"]
        await send_stop(self.nc, beat.worker_id,
                        f"this worker is {state or 'unknown'} to the platform")
        if state is None:
            log.warning("unknown worker %s beat; told it to stop", beat.worker_id)
            return
        worker = workers.WorkerRef(beat.worker_id, row["provider"], row["job_id"])
        async with self.pool.acquire() as conn:
            first = await workers.order_stop(conn, worker, WorkerState(state), at=beat.at,
                                             job_id=beat.job_id, attempt=beat.attempt,
                                             actor=ACTOR)
        if first:
            log.warning("worker %s is %s but beat (job %s attempt %s); told it to stop",
                        beat.worker_id, state, beat.job_id, beat.attempt)

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        while not self.stopping.is_set():
            await pause(self.stopping, self.settings.heartbeat_flush_s)
            if not self.nc.is_connected:
                self._listening_since = loop.time() + self.platform.heartbeat_interval_s
            if not await self.flush() or loop.time() < next_sweep:
                continue
            next_sweep = loop.time() + self.settings.supervisor_sweep_interval_s
            heard_long_enough = (loop.time() - self._listening_since
                                 >= self.sweeper.silence_limit_s)
            try:
                await self.sweeper.sweep(heartbeats=heard_long_enough)
            except (*_DB_ERRORS, NatsError, TimeoutError) as e:
                log.warning("supervisor sweep failed (%s); retrying", e)
