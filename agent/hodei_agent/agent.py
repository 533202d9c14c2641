"""The agent's life: connect, register, heartbeat, take assignments one at a time, exit.

``run()`` blocks until the agent is done (one job when ephemeral; ``max_jobs``, idle
``idle_ttl_s`` or a stop order when reusable) and re-raises a fatal error;
``request_stop()`` (a STOP order, SIGTERM) cancels the running job and ends the agent. An agent
that loses its platform (NATS unreachable past ``agent_platform_lost_s``) stops the same way and
fails with :class:`PlatformLost`, as does a stop whose last reports cannot be stored in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from hodei_agent.config import AgentSettings
from hodei_agent.credentials import Identity, Renewal
from hodei_agent.lost import PlatformLost, StopBound, watch_platform
from hodei_agent.registration import RegistrationRefused, register
from hodei_agent.runner import JobRun, Workdirs
from hodei_common import logconfig, messaging, tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import (
    Assignment,
    Control,
    ControlAction,
    Heartbeat,
    RegisterReply,
)
from hodei_common.contracts.workers import WorkerMode
from hodei_common.natsauth import KeyKind, NKey

log = logging.getLogger(__name__)

__all__ = ["Agent", "PlatformLost", "RegistrationRefused"]

JobKey = tuple[UUID, int | None]


class Agent:
    """One worker's agent."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self.jobs_run = 0
        self._stop_reason: str | None = None
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._started = False
        self._inbox: asyncio.Queue[Msg | None] = asyncio.Queue()  # None: stop
        self._workdirs = Workdirs(settings)
        self._current: JobRun | None = None
        self.abandoned = False  # its job was ended unreported (abandon)
        self._handled: set[JobKey] = set()
        self._cancel_orders: dict[JobKey, str] = {}  # for a job not started yet
        self._lost: str | None = None  # why the platform is considered gone
        self._stop_bound = StopBound(settings.kill_grace_s + settings.drain_grace_s)
        self._identity: Identity | None = None  # its own NATS user, when NATS asks for one
        self.renewal: Renewal | None = None

    def request_stop(self, reason: str = "stop requested") -> None:
        """Cancel the running job (it reports CANCELLED) and end the agent; idempotent."""
        if self._stop_reason is not None:
            return
        log.info("stopping: %s", reason)
        self._stop_reason = reason
        self._stopping.set()
        self._inbox.put_nowait(None)
        if self._current is not None:
            self._current.cancel(reason)
        self._stop_bound.arm()

    def abandon(self, reason: str) -> None:
        """Stop like :meth:`request_stop`, but end the running job without reporting it:
        the platform declares this worker lost and runs the job again (idempotent)."""
        if self._stop_reason is None:
            self.abandoned = True
            if self._current is not None:
                self._current.abandon()
        self.request_stop(reason)

    def _platform_lost(self, why: str) -> None:
        log.error("lost its platform (%s): ending its job and exiting", why)
        self._lost = why
        self.request_stop(f"its agent lost its platform ({why})")

    async def stop(self) -> None:
        """Request a stop and wait until the agent has ended (safe before start)."""
        self.request_stop()
        if self._started:
            await self._done.wait()

    async def run(self) -> None:
        """Run until done; raises RegistrationRefused, UnavailableError, PublishError..."""
        self._started = True
        try:
            tracing.use_service("agent")
            started = await self._until_stopped(self._start())
            if started is None:
                return
            nc, reply = started
            try:
                await self._serve(nc, reply)
            except BaseException:
                await self._close(nc)
                raise
            await self._drain(nc)
            if self._lost is not None:
                raise PlatformLost(f"lost its platform: {self._lost}")
        finally:
            self._done.set()

    async def _until_stopped(
        self, start: Coroutine[Any, Any, tuple[NATS, RegisterReply]]
    ) -> tuple[NATS, RegisterReply] | None:
        """Connect and register, unless a stop comes first (then None)."""
        task = asyncio.create_task(start)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
            return None
        return task.result()

    async def _start(self) -> tuple[NATS, RegisterReply]:
        s = self.settings
        name = subjects.agent_identity(self.worker_id)
        if s.bootstrap_creds is None:  # a NATS that asks for no credentials
            nc = await messaging.connect(s, name, initial_attempts=s.nats_connect_attempts)
            try:
                reply = await register(nc, s)
            except BaseException:
                await nc.close()
                raise
        else:
            reply, nc = await self._register_own_key(name)
        log.info("registered: %s worker, heartbeat every %gs, max_jobs %s, idle_ttl %s",
                 reply.mode, reply.heartbeat_interval_s, reply.max_jobs, reply.idle_ttl_s)
        return nc, reply

    async def _register_own_key(self, name: str) -> tuple[RegisterReply, NATS]:
        """Register over the bootstrap credentials with a key made here, then connect as the
        user the platform minted for that key. The seed stays in this process's memory."""
        s = self.settings
        assert s.bootstrap_creds is not None
        key = NKey.create(KeyKind.USER)
        inbox = subjects.inbox_prefix(name)
        boot = await messaging.connect(
            s, name, creds=(RawCredentials(s.bootstrap_creds.get_secret_value()), inbox),
            initial_attempts=s.nats_connect_attempts)
        try:
            reply = await register(boot, s, public_key=key.public_key)
        finally:
            await self._close(boot)
        assert reply.user_jwt is not None
        # The connection asks for the newest JWT at each connect: a renewed one is used from
        # the next reconnect on (credentials.Renewal).
        self._identity = Identity(key, reply.user_jwt)
        nc = await messaging.connect(s, name, creds=(None, inbox), signer=self._identity.signer,
                                     initial_attempts=s.nats_connect_attempts)
        return reply, nc

    async def _serve(self, nc: NATS, reply: RegisterReply) -> None:
        try:
            self._workdirs.prepare()  # before an assignment can come
            await self._serve_jobs(nc, reply)
        finally:
            self._workdirs.discard()

    async def _serve_jobs(self, nc: NATS, reply: RegisterReply) -> None:
        js = nc.jetstream()
        await nc.subscribe(subjects.worker_control(self.worker_id), cb=self._on_control)
        # Ordered ephemeral consumer from the stream's start: an assignment published before
        # this agent subscribed is still delivered. Fencing drops anything already handled.
        await js.subscribe(
            subjects.worker_assign(self.worker_id),
            stream=subjects.WORKER_ASSIGN_STREAM,
            cb=self._on_assignment,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            # Created by name, the consumer's filter is in the request's subject: NATS
            # permissions let this agent make one on its own assign subject only.
            config=ConsumerConfig(name=f"{subjects.agent_identity(self.worker_id)}-assign"),
        )
        try:
            async with asyncio.TaskGroup() as tg:
                beats = tg.create_task(self._heartbeats(nc, reply.heartbeat_interval_s))
                watch = tg.create_task(watch_platform(
                    nc, self.settings.agent_platform_lost_s, self._platform_lost))
                renew = None
                if self._identity is not None:
                    self.renewal = Renewal(nc, self._identity, self.worker_id,
                                           timeout_s=self.settings.register_timeout_s)
                    renew = tg.create_task(self.renewal.run())
                # Without NATS, a stopped agent's reports would be retried for minutes.
                async with self._stop_bound.applied(self._unreported):
                    await self._work(js, reply)
                beats.cancel()
                watch.cancel()
                if renew is not None:
                    renew.cancel()
        except BaseExceptionGroup as group:
            # One failure at a time here (the body or the heartbeats): raise it as itself so
            # that __main__ can tell a HodeiError from a bug.
            raise group.exceptions[0] from None

    def _unreported(self) -> str:
        """Why the agent gave up, once a stop outlived its bound."""
        if self._lost is not None:
            return f"lost its platform: {self._lost}; its job's end could not be reported"
        return (f"stopped ({self._stop_reason}), but its job's end could not be reported "
                f"within {self._stop_bound.bound_s:g}s: is NATS reachable?")

    async def _drain(self, nc: NATS) -> None:
        try:
            await asyncio.wait_for(nc.drain(), self.settings.drain_grace_s)
        except (TimeoutError, NatsError) as e:
            log.warning("nats: drain did not finish (%s); closing", e or type(e).__name__)
            await self._close(nc)

    async def _close(self, nc: NATS) -> None:
        """Close the connection; without a server it has nothing left to flush (and uvloop
        refuses, with RuntimeError, to write to its closed transport)."""
        with contextlib.suppress(TimeoutError, NatsError, OSError, RuntimeError):
            await asyncio.wait_for(nc.close(), self.settings.drain_grace_s)

    async def _work(self, js: JetStreamContext, reply: RegisterReply) -> None:
        while self._stop_reason is None:
            self._workdirs.prepare()  # the next job's, made while none is here yet
            try:
                msg = await asyncio.wait_for(self._inbox.get(), reply.idle_ttl_s)
            except TimeoutError:
                log.info("no work for %gs: exiting", reply.idle_ttl_s)
                return
            if msg is None:
                return
            assignment = self._admit(msg)
            if assignment is None:
                continue
            with logconfig.job_context(assignment.job_id):  # the job's lines name it
                await self._run_job(js, msg, assignment, functools.partial(self._leaving, reply))
            self.jobs_run += 1
            if reply.mode is WorkerMode.EPHEMERAL:
                return
            if reply.max_jobs is not None and self.jobs_run >= reply.max_jobs:
                log.info("ran %d jobs (max_jobs): exiting", self.jobs_run)
                return

    def _admit(self, msg: Msg) -> Assignment | None:
        """The assignment to run, or None (logged) when it is not for us or not new."""
        try:
            a = msgspec.json.decode(msg.data, type=Assignment)
        except msgspec.DecodeError as e:
            log.error("ignoring an undecodable assignment: %s", e)
            return None
        if a.worker_id != self.worker_id:
            log.warning("ignoring job %s attempt %d: assigned to worker %s, not to us",
                        a.job_id, a.attempt, a.worker_id)
            return None
        if (a.job_id, a.attempt) in self._handled:
            log.info("ignoring job %s attempt %d: already handled", a.job_id, a.attempt)
            return None
        return a

    def _leaving(self, reply: RegisterReply) -> str | None:
        """Why this agent exits after the job it runs now; None when it stays for more."""
        if self._stop_reason is not None:
            return f"its agent is stopping ({self._stop_reason})"
        if reply.mode is WorkerMode.EPHEMERAL:
            return "its one job finished (ephemeral)"
        if reply.max_jobs is not None and self.jobs_run + 1 >= reply.max_jobs:
            return f"ran its {reply.max_jobs} jobs (max_jobs)"
        return None

    async def _run_job(self, js: JetStreamContext, msg: Msg, a: Assignment,
                       leaving: Callable[[], str | None]) -> None:
        self._handled.add((a.job_id, a.attempt))
        job = JobRun(js, a, self.settings, leaving, self._workdirs)
        ordered = self._cancel_orders.pop((a.job_id, a.attempt), None) or self._cancel_orders.pop(
            (a.job_id, None), None
        )
        if ordered is not None:
            job.cancel(ordered)
        if self._stop_reason is not None:
            if self.abandoned:
                job.abandon()
            job.cancel(self._stop_reason)
        self._current = job
        attributes = {tracing.JOB_ID: str(a.job_id), tracing.ATTEMPT: a.attempt,
                      tracing.WORKER_ID: str(self.worker_id)}
        # Neither the command nor its env is logged (nor traced): either may hold a secret.
        log.info("job %s attempt %d: assigned (timeout %gs)", a.job_id, a.attempt, a.timeout_s)
        try:
            with tracing.continued_span("agent run", msg.headers, attributes=attributes) as span:
                async with self._credentials_for():
                    result = await job.run()
                span.set_attribute("hodei.outcome", str(result.outcome))
                if result.exit_code is not None:
                    span.set_attribute("process.exit.code", result.exit_code)
        finally:
            self._current = None

    def _credentials_for(self) -> contextlib.AbstractAsyncContextManager[None]:
        """The job's span of the agent's NATS user: not re-made while it runs unless the JWT
        in use would expire first."""
        if self.renewal is None:
            return contextlib.nullcontext()
        return self.renewal.job()

    async def _on_assignment(self, msg: Msg) -> None:
        await self._inbox.put(msg)

    async def _on_control(self, msg: Msg) -> None:
        try:
            order = msgspec.json.decode(msg.data, type=Control)
        except msgspec.DecodeError as e:
            log.error("ignoring an undecodable control message: %s", e)
            return
        reason = order.reason or f"{order.action} ordered"
        if order.action is ControlAction.STOP:
            self.request_stop(reason)
            return
        if order.job_id is None:
            log.warning("ignoring a cancel order without a job id")
            return
        job = self._current
        if (
            job is not None
            and job.assignment.job_id == order.job_id
            and order.attempt in (None, job.assignment.attempt)
        ):
            job.cancel(reason)
        elif (order.job_id, order.attempt) not in self._handled:
            self._cancel_orders[(order.job_id, order.attempt)] = reason  # cancel it on arrival
        else:
            log.info("ignoring a cancel of job %s attempt %s: not running", order.job_id,
                     order.attempt)

    async def _heartbeats(self, nc: NATS, interval_s: float) -> None:
        subject = subjects.worker_heartbeat(self.worker_id)
        while True:
            job = self._current
            beat = Heartbeat(
                worker_id=self.worker_id,
                at=datetime.now(UTC),
                job_id=job.assignment.job_id if job else None,
                attempt=job.assignment.attempt if job else None,
            )
            with contextlib.suppress(NatsError):  # reconnecting: the next beat will do
                await nc.publish(subject, msgspec.json.encode(beat))
            await asyncio.sleep(interval_s)
