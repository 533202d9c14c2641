"""Request/reply endpoints on a service's NATS micro service, the same way everywhere.

Each request is worked in its own task (at most ``max_in_flight`` per replica: delivery
blocks, not memory, beyond that), inside the caller's trace and under a deadline. Every
failure becomes an :class:`ErrorReply` with a stable code and one line, never a stack trace;
what needs an operator's look is logged, without echoing row data (which may hold secrets).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
import msgspec
from nats.micro.request import Request
from nats.micro.service import Service as MicroService
from opentelemetry.trace import SpanKind, Status, StatusCode

from hodei_common import tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.api import ERROR_STATUS, MAX_REQUEST_BYTES, ErrorCode, ErrorReply
from hodei_common.errors import (
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    ValidationError,
)

log = logging.getLogger(__name__)

R = TypeVar("R", bound=msgspec.Struct)

UNAVAILABLE_MESSAGE = "the database is unavailable; try again shortly"
MAX_MESSAGE_CHARS = 500
# Errors that mean "the database cannot be reached right now", not "this request is wrong".
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    OSError,
)
_CODES: tuple[tuple[type[Exception], ErrorCode], ...] = (
    (ValidationError, ErrorCode.INVALID_ARGUMENT),
    (NotFoundError, ErrorCode.NOT_FOUND),
    (PermissionDeniedError, ErrorCode.PERMISSION_DENIED),
    (PreconditionError, ErrorCode.FAILED_PRECONDITION),
)


Reply = Awaitable[msgspec.Struct]
# Told of each answered request: (endpoint name, "ok" or the error code, seconds taken).
Observer = Callable[[str, str, float], None]
OK = "ok"


def _decode(request_type: type[R], data: bytes) -> R:
    return msgspec.json.decode(data or b"{}", type=request_type)


@dataclass(frozen=True)
class Endpoint(Generic[R]):
    """One micro endpoint: its subject, request struct and handler."""

    name: str
    subject: str
    request_type: type[R]
    handler: Callable[[R], Reply]
    max_bytes: int = MAX_REQUEST_BYTES

    def decode(self, data: bytes) -> R:
        """The request struct; an empty body means every field's default."""
        return _decode(self.request_type, data)

    def bind(self, subject: str) -> Callable[[R], Reply]:
        """The handler of a request received on ``subject``."""
        return self.handler


@dataclass(frozen=True)
class SubjectEndpoint(Generic[R]):
    """An endpoint on a wildcard subject whose handler is given the subject a request came
    on, first (``hodei.worker.*.renew``: NATS permissions let an agent publish on its own
    worker's subject only, so the subject says who asks)."""

    name: str
    subject: str
    request_type: type[R]
    handler: Callable[[str, R], Reply]
    max_bytes: int = MAX_REQUEST_BYTES

    def decode(self, data: bytes) -> R:
        """The request struct; an empty body means every field's default."""
        return _decode(self.request_type, data)

    def bind(self, subject: str) -> Callable[[R], Reply]:
        """The handler of a request received on ``subject``."""
        return functools.partial(self.handler, subject)


@dataclass(frozen=True)
class NamespacedEndpoint(SubjectEndpoint[R]):
    """An endpoint of every namespace (``hodei.api.*.jobs.get``): its handler is given the
    namespace of the subject a request came on, first. That subject is all the caller's
    identity the handler needs, once NATS credentials let a user publish to its own
    namespace's subjects only."""

    def bind(self, subject: str) -> Callable[[R], Reply]:
        """The handler of a request received on ``subject``, in the subject's namespace; a
        malformed namespace token is a :class:`ValidationError`."""
        return functools.partial(self.handler, subjects.namespace_of(subject))


AnyEndpoint = Endpoint[Any] | SubjectEndpoint[Any]


def one_line(message: str) -> str:
    """A message safe for the error header: one line, bounded length."""
    line = " ".join(message.split())
    if len(line) > MAX_MESSAGE_CHARS:
        line = line[: MAX_MESSAGE_CHARS - 3] + "..."
    return line or "error"


def internal_message(service: str) -> str:
    return f"internal error; see the {service} service log"


class EndpointServer:
    """Serves endpoints for one service; :meth:`drain` lets requests in flight finish."""

    def __init__(
        self,
        service: str,
        *,
        max_in_flight: int,
        deadline_s: float,
        describe_invalid: Callable[[str], str] = lambda message: message,
        observe: Observer | None = None,
    ) -> None:
        self._service = service
        self._observe = observe
        self._deadline_s = deadline_s
        self._describe_invalid = describe_invalid
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)

    @property
    def in_flight(self) -> int:
        """How many requests this replica is working on right now."""
        return len(self._in_flight)

    async def add(self, micro: MicroService, endpoints: list[AnyEndpoint], queue: str) -> None:
        """Add each endpoint to ``micro`` in the queue group shared by the replicas."""
        for endpoint in endpoints:
            await micro.add_endpoint(name=endpoint.name, subject=endpoint.subject,
                                     handler=self._dispatcher(endpoint), queue_group=queue)

    async def drain(self, grace_s: float) -> None:
        """Wait for the requests in flight up to ``grace_s``, then cancel the rest."""
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(self._in_flight, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%s: cancelled %d requests still in flight", self._service, len(pending))
            await asyncio.wait(pending)

    def classify(self, error: Exception, subject: str) -> tuple[ErrorCode, str]:
        """The error code and user-facing line for a failed request; logs what needs a look."""
        # msgspec.ValidationError subclasses DecodeError, so it is checked first.
        if isinstance(error, msgspec.ValidationError):
            return ErrorCode.INVALID_ARGUMENT, self._describe_invalid(str(error))
        if isinstance(error, msgspec.DecodeError):
            return ErrorCode.INVALID_ARGUMENT, f"malformed request: {error}"
        for kind, code in _CODES:
            if isinstance(error, kind):
                return code, str(error)
        if isinstance(error, TimeoutError):
            log.warning("%s: no answer within the request deadline", subject)
            return ErrorCode.UNAVAILABLE, f"the {self._service} did not answer in time; try again"
        if isinstance(error, _UNAVAILABLE):
            log.warning("%s: database unavailable: %s", subject, error)
            return ErrorCode.UNAVAILABLE, UNAVAILABLE_MESSAGE
        _log_failure(subject, error)
        return ErrorCode.INTERNAL, internal_message(self._service)

    def _dispatcher(self, endpoint: AnyEndpoint) -> Callable[[Request], Awaitable[None]]:
        # The subscription delivers one message at a time: hand each to its own task.
        async def dispatch(req: Request) -> None:
            await self._slots.acquire()
            task = asyncio.create_task(self._handle(endpoint, req),
                                       name=f"{self._service}:{endpoint.name}")
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

        return dispatch

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def _handle(self, endpoint: AnyEndpoint, req: Request) -> None:
        started = time.perf_counter()
        outcome = await self._answer(endpoint, req)
        if self._observe is not None:
            self._observe(endpoint.name, outcome, time.perf_counter() - started)

    async def _answer(self, endpoint: AnyEndpoint, req: Request) -> str:
        """Reply to ``req``; return ``ok`` or the error code replied."""
        with tracing.continued_span(
            f"{self._service} {endpoint.subject}", req.headers, kind=SpanKind.SERVER,
            attributes={tracing.DESTINATION: endpoint.subject},
        ) as span:
            try:
                body = await self._reply_body(endpoint, req)
            except Exception as e:
                code, message = self.classify(e, endpoint.subject)
                span.set_status(Status(StatusCode.ERROR, code.value))
                line = one_line(message)
                await self._send(req.respond_error(
                    code=str(ERROR_STATUS[code]), description=line,
                    data=msgspec.json.encode(ErrorReply(code=code, message=line)),
                ))
                return code.value
            await self._send(req.respond(body))
            return OK

    async def _reply_body(self, endpoint: AnyEndpoint, req: Request) -> bytes:
        data = req.data
        if len(data) > endpoint.max_bytes:
            raise ValidationError(
                f"request is {len(data)} bytes; at most {endpoint.max_bytes // 1024} KiB"
            )
        handler = endpoint.bind(req.subject)
        request = endpoint.decode(data)
        async with asyncio.timeout(self._deadline_s):
            reply = await handler(request)
        return msgspec.json.encode(reply)

    async def _send(self, reply: Awaitable[None]) -> None:
        try:
            await reply
        except Exception as e:  # the caller's connection or ours went away; nothing to answer
            log.warning("%s: could not send a reply: %s", self._service, e)


def _log_failure(subject: str, error: Exception) -> None:
    if isinstance(error, asyncpg.PostgresError):
        # str() of a PostgreSQL error appends DETAIL, which quotes the failing row and so a
        # job's env values (secrets): log the frames and the bare message only.
        frames = "".join(traceback.format_tb(error.__traceback__))
        log.error("%s: request failed: %s (sqlstate %s): %s\n%s", subject,
                  type(error).__name__, error.sqlstate, error.args[0], frames.rstrip())
    else:
        log.error("%s: request failed", subject, exc_info=error)
