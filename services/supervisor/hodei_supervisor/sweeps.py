"""The supervisor's sweeps: workers gone silent, assignments never taken, jobs past their
timeout, workers that never registered, cancel orders not obeyed yet. Each lost worker goes
through :class:`Recovery`, one conditional statement per worker, so a sweep racing the
provisioner settles each worker once. Replicas take turns: a sweep runs only while it holds
an advisory lock, so N supervisors make one sweep's queries and orders, not N."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from nats.aio.client import Client as NATS

from hodei_common.contracts.agent import StatusKind
from hodei_common.database import LOCK_SUPERVISOR_SWEEP, exclusive
from hodei_common.recovery import Fate, Recovery, Silence, send_cancel
from hodei_supervisor import store
from hodei_supervisor.config import SupervisorSettings

log = logging.getLogger(__name__)


class Sweeper:
    """One sweep finds and settles every lost or stuck worker and job it can see."""

    def __init__(self, pool: asyncpg.Pool, nc: NATS, recovery: Recovery,
                 settings: SupervisorSettings, *, heartbeat_interval_s: float) -> None:
        self._pool = pool
        self._recovery = recovery
        self._settings = settings
        self.silence_limit_s = settings.silence_limit_s(heartbeat_interval_s)
        self._nc = nc
        self._next_cancel_resend = 0.0

    async def sweep(self, *, heartbeats: bool = True) -> int | None:
        """One pass; ``heartbeats`` False skips the silence check (the supervisor has not
        been listening long enough to judge it). Returns how many workers were lost, or None
        when another replica is sweeping."""
        async with exclusive(self._pool, LOCK_SUPERVISOR_SWEEP) as mine:
            if not mine:
                return None
            return await self._sweep(heartbeats)

    async def _sweep(self, heartbeats: bool) -> int:
        s = self._settings
        # No span of its own: what a sweep does to a job is recorded in the job's trace
        # (hodei_record_events gives its events the job's traceparent).
        async with self._pool.acquire() as conn:
            silent = (await store.silent_workers(conn, self.silence_limit_s)
                      if heartbeats else [])
            unaccepted = await store.unaccepted_jobs(conn, s.supervisor_accept_timeout_s)
            overdue = await store.overdue_jobs(conn, s.supervisor_timeout_grace_s)
            unregistered = await store.unregistered_workers(
                conn, s.supervisor_register_timeout_s)
            cancels = await store.cancels_pending(conn, s.supervisor_cancel_resend_s)
        lost = 0
        for w in silent:
            silence = Silence(w["last_heartbeat"], round(w["silent_s"], 3))
            reason = f"no heartbeat for {w['silent_s']:.1f}s"
            lost += _counted(await self._recovery.lose(w["id"], reason, silence=silence,
                                                       cause="heartbeat"))
        for j in unaccepted:
            lost += _counted(await self._recovery.lose(
                j["worker_id"],
                f"did not take its assignment within {s.supervisor_accept_timeout_s:g}s",
                expected_job=(j["id"], j["attempt"]), leave_if_reported=tuple(StatusKind),
                cause="assignment_not_taken"))
        for j in overdue:
            lost += _counted(await self._recovery.lose(
                j["worker_id"],
                f"no result {s.supervisor_timeout_grace_s:g}s after its job's timeout",
                fate=Fate.TIME_OUT, expected_job=(j["id"], j["attempt"]),
                job_error=f"timed out after {j['timeout_s']:g}s; its worker never "
                          "reported the end", cause="job_overdue"))
        for w in unregistered:
            lost += _counted(await self._recovery.lose(
                w["id"], f"did not register within {s.supervisor_register_timeout_s:g}s",
                cause="not_registered"))
        await self._resend_cancels(cancels)
        return lost

    async def _resend_cancels(self, jobs: list[asyncpg.Record]) -> None:
        """Say a cancel order again, at most every ``supervisor_cancel_resend_s`` per pass."""
        loop = asyncio.get_running_loop()
        if not jobs or loop.time() < self._next_cancel_resend:
            return
        self._next_cancel_resend = loop.time() + self._settings.supervisor_cancel_resend_s
        for j in jobs:
            await send_cancel(self._nc, j["id"], j["attempt"], j["worker_id"])



def _counted(outcome: str | None) -> int:
    return 0 if outcome is None else 1
