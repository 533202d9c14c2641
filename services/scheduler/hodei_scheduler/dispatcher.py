"""The dispatch pass: pair QUEUED jobs with READY workers, then ask for the workers missing.

Passes are serialised across replicas by an advisory lock their transaction holds, so two
schedulers never count the same demand twice. Any event that may make work possible pokes
the dispatcher; a periodic pass catches whatever an event missed, so a QUEUED job with a
capable worker is assigned within one interval even if every event about it was lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from uuid import UUID, uuid4

import asyncpg
from nats.js import JetStreamContext

from hodei_common.assignments import AssignmentSender
from hodei_common.contracts.workers import WorkerMode
from hodei_common.database import LOCK_DISPATCH, Conn, locked_transaction
from hodei_common.lifecycle import jobs, workers
from hodei_common.waiting import wait_any
from hodei_scheduler import store
from hodei_scheduler.directory import WorkerProviders

log = logging.getLogger(__name__)

ACTOR = "scheduler"
MIN_GAP_S = 0.005
# After a poked pass left a job and a READY worker apart: the passes to look again.
UNPAIRED_RETRIES_S = (0.01, 0.04, 0.16)
HOUSEKEEPING_S = 0.25
PICK_BATCH = 64


class Dispatcher:
    """Runs dispatch passes when poked and on an interval."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        interval_s: float,
        resend_s: float,
        providers: WorkerProviders,
        log_max_bytes: int | None = None,
    ) -> None:
        self._pool = pool
        self._providers = providers
        self._sender = AssignmentSender(js, ACTOR, log_max_bytes)
        self._interval_s = interval_s
        self._resend_s = resend_s
        self._poked = asyncio.Event()
        self._pokes = 0  # how many so far: more than one during a pass is a flood
        self._unpaired_retries: list[float] = []
        self._told = False  # poked about a commit since the last pass began (not a retry)
        self._next_housekeeping = 0.0
        self.provisioning = True
        self.last_pass_started = 0.0  # wall clock: a pass that began later saw the earlier commits

    def poke(self) -> None:
        """Something changed (committed): run a pass soon."""
        self._told = True
        self._wake()

    def _wake(self) -> None:
        self._pokes += 1
        self._poked.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Pass after pass until ``stopping``: on a poke, or every interval.

        A poke that came while a pass ran starts the next at once, unless more than one
        came: a flood of events (a thousand submits a second) is then served by fewer,
        fuller passes, started at most every ``MIN_GAP_S``, instead of one pass per event.
        """
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            self._poked.clear()
            started, pokes = loop.time(), self._pokes
            try:
                await self.dispatch_pass()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("dispatch pass failed (%s); retrying", e)
            if self._pokes - pokes > 1:
                await asyncio.sleep(max(0.0, started + MIN_GAP_S - loop.time()))
            await wait_any(stopping, self._poked, within_s=self._interval_s)

    async def dispatch_pass(self) -> int:
        """Assign what can be assigned, request missing workers; return assignments made.

        Retiring idle workers and resending unanswered assignments are housekeeping that
        nothing waits on: they run at most every ``HOUSEKEEPING_S``, not on every poke.
        """
        loop = asyncio.get_running_loop()
        self.last_pass_started = time.time()
        told, self._told = self._told, False
        housekeeping = loop.time() >= self._next_housekeeping
        if housekeeping:
            self._next_housekeeping = loop.time() + HOUSEKEEPING_S
        # No span of its own: a pass is many jobs' step, recorded in each job's trace (the
        # events it writes take their job's trace in hodei_record_events, each assignment
        # is sent in a span of its job's).
        # One transaction: its advisory lock serialises passes across replicas and goes
        # away with it, whatever happens to this process.
        async with self._pool.acquire() as conn, locked_transaction(conn, LOCK_DISPATCH):
            assigned = await self._assign(conn)
            unpaired = False
            if self.provisioning:
                if housekeeping:
                    await self._retire_idle(conn)
                unpaired = await self._provision(conn)
            stale = (await store.unanswered_assignments(conn, self._resend_s)
                     if housekeeping else [])
        if told:
            self._unpaired_retries = list(UNPAIRED_RETRIES_S)
        if unpaired and self._unpaired_retries:
            # A job and a READY worker of one class are left apart: the pass may have skipped
            # a row another statement held locked just then (a heartbeat's update of the
            # workers), and what it was poked about starts no other pass: look again, a
            # few times, a little later each time.
            loop.call_later(self._unpaired_retries.pop(0), self._wake)
        # Side by side: each goes to its own worker, and the last need not wait for the
        # acknowledgements of all the others.
        await asyncio.gather(*(self._sender.send(row) for row in assigned))
        for row in stale:
            log.info("job %s: assignment not accepted yet; sending it again", row["id"])
            await self._sender.send(row)
        return len(assigned)

    async def _assign(self, conn: Conn) -> list[asyncpg.Record]:
        """Pair jobs with workers, a batch per statement, until no more pairs fit; the rows
        of the jobs assigned."""
        assigned: list[asyncpg.Record] = []
        while pairs := await store.pick_pairs(conn, PICK_BATCH):
            for p in pairs:
                self._providers.remember(p["worker_id"], p["provider"])
            rows = await jobs.assign(
                conn, [(p["job_id"], p["worker_id"], p["attempt"]) for p in pairs], actor=ACTOR)
            if len(rows) != len(pairs) or rows[0]["occupied"] != len(pairs):
                raise RuntimeError("jobs or workers moved while locked by the dispatch pass")
            assigned.extend(rows)
            if pairs[0]["considered"] < PICK_BATCH:
                break
        return assigned

    async def _retire_idle(self, conn: Conn) -> None:
        """Retire READY workers idle past their provider's ``idle_ttl_s`` (keeping min_idle):
        the platform decides, so no job is ever assigned to an agent that left on its own."""
        for w in await store.idle_surplus(conn):
            await workers.retire(conn, workers.WorkerRef(w["id"], w["provider"], w["for_job_id"]),
                                 workers.Retirement.IDLE, f"idle for more than {w['ttl']:g}s",
                                 actor=ACTOR)

    async def _provision(self, conn: Conn) -> bool:
        """Request a worker per waiting job (plus the warm pool), within max_workers; whether
        a class of limits has both waiting jobs and READY workers left.

        A worker is made with its job's limits, so demand is counted per class of limits;
        the provider's room goes to the class whose job has waited longest.
        """
        room: dict[str, int] = {}
        unpaired = False
        for p in await store.provider_demand(conn):
            unpaired = unpaired or (p["queued"] > 0 and p["ready"] > 0)
            default_class = p["cpus"] is None and p["memory_bytes"] is None
            wanted = (p["queued"] + (p["min_idle"] if default_class else 0)
                      - p["creating"] - p["ready"])
            left = room.setdefault(p["name"], p["max_workers"] - p["active"])
            made = max(0, min(wanted, left))
            room[p["name"]] = left - made
            if made <= 0:
                continue
            # Each new worker is requested for a job of its own; the rest form the warm pool.
            waiting: list[UUID | None] = list(await store.unserved_jobs(
                conn, p["name"], p["cpus"], p["memory_bytes"], made))
            waiting += [None] * (made - len(waiting))
            for job_id in waiting:
                await workers.request(
                    conn, workers.WorkerRef(uuid4(), p["name"], job_id),
                    mode=WorkerMode(p["worker_mode"]), cpus=p["cpus"],
                    memory_bytes=p["memory_bytes"], actor=ACTOR)
        return unpaired
