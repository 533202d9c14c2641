"""The platform side of one worker, played by the test, around the real agent process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from hodei_common.contracts import subjects
from hodei_common.contracts.agent import (
    Assignment,
    Control,
    ControlAction,
    Heartbeat,
    RegisterReply,
    RegisterRequest,
    RenewReply,
    StatusKind,
    StatusReport,
)
from hodei_common.contracts.api import ErrorCode, ErrorReply
from hodei_common.contracts.logs import LogBatch, LogLine, LogStream
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.contracts.workers import WorkerMode
from hodei_common.natsauth import permissions
from hodei_common.natsauth.server import Issuer
from hodei_common.testing import assert_eventually

TOKEN = "bootstrap-secret-token-1234"


class AgentProcess:
    """The agent under test, run as `python -m hodei_agent`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr = ""
        self._reader = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr += line.decode(errors="replace")

    async def exit_code(self, within_s: float = 15.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), within_s)
        await self._reader
        return code

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Platform:
    """Answers registration, assigns jobs and records what the agent reports."""

    def __init__(self, nc: NATS, js: JetStreamContext, nats_url: str, workdir: Path,
                 issuer: Issuer) -> None:
        self.nc = nc
        self.issuer = issuer
        self.js = js
        self.nats_url = nats_url
        self.workdir = workdir
        self.worker_id = uuid4()
        self.reply = RegisterReply(worker_id=self.worker_id, mode=WorkerMode.EPHEMERAL)
        self.refusal: str | None = None
        self.registrations: list[RegisterRequest] = []
        self.statuses: list[StatusReport] = []
        self.batches: list[LogBatch] = []
        self.heartbeats: list[Heartbeat] = []
        self.headers: list[dict[str, str]] = []  # of every status report and log batch
        self.agents: list[AgentProcess] = []
        self._registrar: Subscription | None = None
        # How long the agent's JWTs live (None: no expiry), and the renewals answered; a
        # renewal is refused with ``renew_refusal`` when set; the first ``renewals_unanswered``
        # requests get no reply at all, as when a reply is lost.
        self.jwt_lifetime_s: float | None = None
        self.renewals = 0
        self.renew_refusal: str | None = None
        self.renewals_unanswered = 0
        self.renewals_asked = 0

    async def start(self) -> None:
        await self.nc.subscribe(subjects.worker_heartbeat(self.worker_id), cb=self._on_beat)
        await self.js.subscribe(
            subjects.worker_status(self.worker_id), stream=subjects.WORKER_STATUS_STREAM,
            cb=self._on_status, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        await self.js.subscribe(
            subjects.LOGS_SUBJECTS, stream=subjects.LOGS_STREAM, cb=self._on_logs,
            ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)

    def user_jwt(self, public_key: str) -> str:
        """The agent's user, as the provisioner mints it (expiring after ``jwt_lifetime_s``)."""
        expires_at = None if self.jwt_lifetime_s is None else time.time() + self.jwt_lifetime_s
        return self.issuer.bind(public_key, permissions.agent(self.worker_id),
                                expires_at=expires_at)

    async def open_renewals(self) -> None:
        """Answer ``hodei.worker.<id>.renew`` as the provisioner would, for the key the agent
        registered."""
        await self.nc.subscribe(subjects.worker_renew(self.worker_id), cb=self._on_renew)

    async def _on_renew(self, msg: Msg) -> None:
        self.renewals_asked += 1
        if self.renewals_asked <= self.renewals_unanswered:
            return
        if self.renew_refusal is not None:
            await self._refuse(msg, self.renew_refusal)
            return
        key = self.registrations[-1].public_key
        assert key is not None
        self.renewals += 1
        await msg.respond(msgspec.json.encode(RenewReply(user_jwt=self.user_jwt(key))))

    async def _refuse(self, msg: Msg, message: str) -> None:
        # As the provisioner's micro endpoint answers: the two service-error headers and an
        # ErrorReply body.
        body = ErrorReply(code=ErrorCode.PERMISSION_DENIED, message=message)
        await self.nc.publish(msg.reply, msgspec.json.encode(body),
                              headers={ERROR_HEADER: message, ERROR_CODE_HEADER: "403"})

    async def open_registration(self) -> None:
        """Answer ``hodei.worker.register`` as the provisioner would."""
        self._registrar = await self.nc.subscribe(subjects.WORKER_REGISTER, cb=self._on_register)

    async def close_registration(self) -> None:
        """Nobody answers ``hodei.worker.register`` (the provisioner is not up yet)."""
        if self._registrar is not None:
            await self._registrar.unsubscribe()
            self._registrar = None

    async def _on_register(self, msg: Msg) -> None:
        request = msgspec.json.decode(msg.data, type=RegisterRequest)
        self.registrations.append(request)
        if self.refusal is None:
            reply = self.reply
            if request.public_key is not None:  # its own user, as the provisioner mints it
                reply = msgspec.structs.replace(reply,
                                                user_jwt=self.user_jwt(request.public_key))
            await msg.respond(msgspec.json.encode(reply))
            return
        await self._refuse(msg, self.refusal)

    async def _on_beat(self, msg: Msg) -> None:
        self.heartbeats.append(msgspec.json.decode(msg.data, type=Heartbeat))

    async def _on_status(self, msg: Msg) -> None:
        self.statuses.append(msgspec.json.decode(msg.data, type=StatusReport))
        self.headers.append(msg.headers or {})

    async def _on_logs(self, msg: Msg) -> None:
        batch = msgspec.json.decode(msg.data, type=LogBatch)
        assert msg.subject == subjects.job_logs(DEFAULT_NAMESPACE, batch.job_id, self.worker_id)
        self.batches.append(batch)
        self.headers.append(msg.headers or {})

    def serve(self, mode: WorkerMode = WorkerMode.EPHEMERAL, **fields: Any) -> None:
        """Answer the next registrations with this reply."""
        self.reply = RegisterReply(worker_id=self.worker_id, mode=mode, **fields)

    async def start_agent(self, **env: str) -> AgentProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hodei_agent", env=self.agent_env(**env),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        agent = AgentProcess(proc)
        self.agents.append(agent)
        return agent

    def agent_env(self, **env: str) -> dict[str, str]:
        """The environment of an agent of this worker (with ``env`` on top)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HODEI_", "OTEL_"))}
        base.update(
            HODEI_NATS_URL=self.nats_url,
            HODEI_WORKER_ID=str(self.worker_id),
            HODEI_BOOTSTRAP_TOKEN=TOKEN,
            HODEI_BOOTSTRAP_CREDS=self.issuer.new_user(
                permissions.bootstrap(self.worker_id)).creds,
            HODEI_HOME=str(self.workdir / "home"),
            HODEI_WORKER_WORKDIR=str(self.workdir / "jobs"),
            HODEI_REGISTER_DEADLINE_S="5",
        )
        base.update(env)
        return base

    async def assign(
        self,
        command: str,
        *,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 30.0,
        job_id: UUID | None = None,
        attempt: int = 1,
        worker_id: UUID | None = None,
        headers: dict[str, str] | None = None,
        log_max_bytes: int | None = None,
    ) -> Assignment:
        assignment = Assignment(
            job_id=job_id or uuid4(), attempt=attempt, worker_id=worker_id or self.worker_id,
            namespace=DEFAULT_NAMESPACE, command=command, args=args or [], env=env or {},
            timeout_s=timeout_s, assigned_at=datetime.now(UTC), log_max_bytes=log_max_bytes)
        # No Nats-Msg-Id: a duplicate assignment must reach the agent to test its fencing.
        await self.js.publish(subjects.worker_assign(self.worker_id),
                              msgspec.json.encode(assignment), headers=headers)
        return assignment

    async def control(
        self, action: ControlAction, job: Assignment | None = None, *, job_id: UUID | None = None
    ) -> None:
        order = Control(action=action, job_id=job.job_id if job else job_id,
                        attempt=job.attempt if job else None, reason="test")
        await self.nc.publish(subjects.worker_control(self.worker_id), msgspec.json.encode(order))

    def reports(self, job: Assignment) -> list[StatusReport]:
        return [s for s in self.statuses if (s.job_id, s.attempt) == (job.job_id, job.attempt)]

    async def reached(self, job: Assignment, kind: StatusKind,
                      within_s: float = 15.0) -> StatusReport:
        """The job's report of ``kind``, once the agent has published it."""
        def check() -> StatusReport | None:
            return next((s for s in self.reports(job) if s.kind is kind), None)

        report = await assert_eventually(check, within_s=within_s,
                                         message=f"no {kind} report for {job.command!r}")
        assert report is not None
        return report

    async def finished(self, job: Assignment, within_s: float = 15.0) -> StatusReport:
        """The FINISHED report, once the log lines it counts have reached this test too."""
        report = await self.reached(job, StatusKind.FINISHED, within_s)
        # The log stream has them all (the agent publishes them before FINISHED), but this
        # test reads that stream through another consumer, which may lag behind.
        await assert_eventually(lambda: len(self.lines(job)) >= (report.log_lines or 0),
                                within_s=within_s, message="the log lines did not all arrive")
        return report

    def lines(self, job: Assignment) -> list[LogLine]:
        return [line for b in self.batches if (b.job_id, b.attempt) == (job.job_id, job.attempt)
                for line in b.lines]

    def texts(self, job: Assignment) -> list[str]:
        return [line.text for line in self.lines(job)]

    def output(self, job: Assignment, stream: LogStream) -> bytes:
        """What the job wrote on ``stream``, rebuilt byte for byte from its log."""
        return b"".join(b.data_of(line) for b in self.batches
                        if (b.job_id, b.attempt) == (job.job_id, job.attempt)
                        for line in b.lines if line.stream is stream)
