"""The provisioner service: two durable consumers (provision, release) and the register
endpoint agents exchange their bootstrap token at.

Registration requests are worked concurrently (up to ``provisioner_max_in_flight`` per
replica); the queue group spreads them over the replicas. Failures become an
:class:`ErrorReply` with a one-line message that never quotes the token.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Sequence
from typing import ClassVar, TypeVar

import asyncpg
import msgspec
from nats.aio.msg import Msg
from nats.micro.request import Request
from opentelemetry.trace import SpanKind, Status, StatusCode

from hodei_common import tracing
from hodei_common.consumer import ConsumerSpec, consume
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import RegisterRequest
from hodei_common.contracts.api import ERROR_STATUS, ErrorCode, ErrorReply
from hodei_common.contracts.workers import ProvisionRequested, WorkerTerminating
from hodei_common.errors import PermanentError, ValidationError
from hodei_common.runner import HodeiService, Loop
from hodei_provisioner import handlers
from hodei_provisioner.config import ProvisionerSettings
from hodei_provisioner.providers import Provider
from hodei_provisioner.providers.local import LocalProvider, inherited_env

log = logging.getLogger(__name__)

T = TypeVar("T", bound=msgspec.Struct)

MAX_REGISTER_BYTES = 16 * 1024
INTERNAL_MESSAGE = "internal error; see the provisioner service log"
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    OSError,
)

PROVISION_SPEC = ConsumerSpec(stream=subjects.WORKER_EVENTS_STREAM,
                              durable=subjects.PROVISIONER_REQUESTS_CONSUMER,
                              filter_subjects=[subjects.PROVISION_REQUESTED])
RELEASE_SPEC = ConsumerSpec(stream=subjects.WORKER_EVENTS_STREAM,
                            durable=subjects.PROVISIONER_RELEASE_CONSUMER,
                            filter_subjects=[subjects.WORKER_TERMINATING])


def default_providers(settings: ProvisionerSettings) -> list[Provider]:
    """The providers this build has: the local-process one (Docker, Kubernetes: later)."""
    return [LocalProvider(settings.provisioner_agent_command, settings.workers_dir(),
                          env=inherited_env(os.environ),
                          grace_s=settings.provisioner_destroy_grace_s)]


def classify(error: Exception) -> tuple[ErrorCode, str]:
    """The error code and one line for a failed registration; logs what needs a look."""
    # msgspec.ValidationError subclasses DecodeError; neither message quotes a value.
    if isinstance(error, msgspec.DecodeError):
        return ErrorCode.INVALID_ARGUMENT, f"malformed registration request: {error}"
    if isinstance(error, ValidationError):
        return ErrorCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, handlers.RegistrationDenied):
        return ErrorCode.PERMISSION_DENIED, str(error)
    if isinstance(error, TimeoutError):
        log.warning("register: no answer within the request deadline")
        return ErrorCode.UNAVAILABLE, "the provisioner did not answer in time; try again"
    if isinstance(error, _UNAVAILABLE):
        log.warning("register: database unavailable: %s", error)
        return ErrorCode.UNAVAILABLE, "the worker database is unavailable; try again shortly"
    log.error("register: request failed", exc_info=error)
    return ErrorCode.INTERNAL, INTERNAL_MESSAGE


def _decode(msg: Msg, struct: type[T]) -> T:
    try:
        return msgspec.json.decode(msg.data, type=struct)
    except msgspec.DecodeError as e:
        raise PermanentError(f"undecodable {struct.__name__}: {e}") from e


class ProvisionerService(HodeiService):
    """Creates workers on request, lets their agents register, destroys them when done."""

    name: ClassVar[str] = subjects.PROVISIONER_SERVICE
    description: ClassVar[str] = "Hodei provisioner: creates, registers and destroys workers"

    def __init__(
        self, settings: ProvisionerSettings, providers: Sequence[Provider] | None = None
    ) -> None:
        super().__init__(settings)
        self.config = settings
        self.providers = {p.kind: p for p in (providers or default_providers(settings))}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.provisioner_max_in_flight)
        self._deps: handlers.Deps | None = None

    @property
    def deps(self) -> handlers.Deps:
        assert self._deps is not None, "service not started"
        return self._deps

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            for provider in self.providers.values():
                await provider.close()

    async def setup(self) -> None:
        self._deps = handlers.Deps(
            pool=self.pool,
            providers=self.providers,
            token_ttl_s=self.config.provisioner_token_ttl_s,
            heartbeat_interval_s=self.config.provisioner_heartbeat_interval_s,
            agent_nats_url=self.config.agent_nats_url(),
        )
        await self.micro.add_endpoint(
            name="worker_register",
            subject=subjects.WORKER_REGISTER,
            handler=self._dispatch,
            queue_group=subjects.PROVISIONER_QUEUE_GROUP,
        )

    def loops(self) -> list[Loop]:
        return [self._provision_loop, self._release_loop]

    async def stop_fetching(self) -> None:
        """Let registrations in flight finish (up to the grace period), then cancel them."""
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(self._in_flight, timeout=self.settings.drain_grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("provisioner: cancelled %d registrations in flight", len(pending))
            await asyncio.wait(pending)

    # --- consumers -----------------------------------------------------------------------
    async def _provision_loop(self) -> None:
        await consume(self.js, PROVISION_SPEC, self._on_provision, self.stopping)

    async def _release_loop(self) -> None:
        await consume(self.js, RELEASE_SPEC, self._on_release, self.stopping)

    async def _on_provision(self, msg: Msg) -> None:
        await handlers.provision(self.deps, _decode(msg, ProvisionRequested))

    async def _on_release(self, msg: Msg) -> None:
        await handlers.release(self.deps, _decode(msg, WorkerTerminating))

    # --- registration --------------------------------------------------------------------
    async def _dispatch(self, req: Request) -> None:
        # One task per request; delivery blocks (not memory) when enough are in flight.
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(req), name="provisioner:register")
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def _handle(self, req: Request) -> None:
        with tracing.continued_span(
            f"provisioner {subjects.WORKER_REGISTER}", req.headers, kind=SpanKind.SERVER,
            attributes={"messaging.destination.name": subjects.WORKER_REGISTER},
        ) as span:
            try:
                body = await self._reply_body(req.data)
            except Exception as e:
                code, message = classify(e)
                span.set_status(Status(StatusCode.ERROR, code.value))
                line = handlers.one_line(message)
                await self._send(req.respond_error(
                    code=str(ERROR_STATUS[code]), description=line,
                    data=msgspec.json.encode(ErrorReply(code=code, message=line)),
                ))
            else:
                await self._send(req.respond(body))

    async def _reply_body(self, data: bytes) -> bytes:
        if len(data) > MAX_REGISTER_BYTES:
            raise ValidationError(
                f"request is {len(data)} bytes; at most {MAX_REGISTER_BYTES // 1024} KiB")
        request = msgspec.json.decode(data, type=RegisterRequest)
        async with asyncio.timeout(self.settings.request_timeout_s):
            reply = await handlers.register(self.deps, request)
        return msgspec.json.encode(reply)

    async def _send(self, reply: Awaitable[None]) -> None:
        try:
            await reply
        except Exception as e:  # the agent's connection or ours went away
            log.warning("provisioner: could not send a reply: %s", e)
