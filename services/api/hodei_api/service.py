"""The API service: the ``hodei-api`` micro endpoints and the wrapper every request goes through.

The wrapper decodes the request, runs its handler inside the caller's trace and under a
deadline, and turns every failure into an :class:`ErrorReply` with a one-line message.
Requests are worked concurrently (up to ``api_max_in_flight`` per replica); the queue group
spreads them over the replicas.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import asyncpg
import msgspec
from nats.micro.request import Request
from opentelemetry.trace import SpanKind, Status, StatusCode

from hodei_api import handlers
from hodei_api.config import ApiSettings
from hodei_common import tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.api import (
    ERROR_STATUS,
    MAX_REQUEST_BYTES,
    ErrorCode,
    ErrorReply,
    JobRef,
    ListJobs,
    ListProviders,
    ListWorkers,
    SubmitJob,
)
from hodei_common.errors import NotFoundError, PreconditionError, ValidationError
from hodei_common.runner import HodeiService

log = logging.getLogger(__name__)

R = TypeVar("R", bound=msgspec.Struct)

INTERNAL_MESSAGE = "internal error; see the api service log"
UNAVAILABLE_MESSAGE = "the job database is unavailable; try again shortly"
_MAX_MESSAGE_CHARS = 500
# Errors that mean "the database cannot be reached right now", not "this request is wrong".
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    OSError,
)


@dataclass(frozen=True)
class Endpoint(Generic[R]):
    """One micro endpoint: its subject, request struct and handler."""

    name: str
    subject: str
    request_type: type[R]
    handler: Callable[[asyncpg.Pool, R], Awaitable[msgspec.Struct]]

    def decode(self, data: bytes) -> R:
        """The request struct; an empty body means every field's default."""
        return msgspec.json.decode(data or b"{}", type=self.request_type)


ENDPOINTS: tuple[Endpoint[Any], ...] = (
    Endpoint("jobs_submit", subjects.API_JOBS_SUBMIT, SubmitJob, handlers.submit_job),
    Endpoint("jobs_get", subjects.API_JOBS_GET, JobRef, handlers.get_job),
    Endpoint("jobs_list", subjects.API_JOBS_LIST, ListJobs, handlers.list_jobs),
    Endpoint("jobs_cancel", subjects.API_JOBS_CANCEL, JobRef, handlers.cancel_job),
    Endpoint("jobs_events", subjects.API_JOBS_EVENTS, JobRef, handlers.job_events),
    Endpoint("workers_list", subjects.API_WORKERS_LIST, ListWorkers, handlers.list_workers),
    Endpoint("providers_list", subjects.API_PROVIDERS_LIST, ListProviders,
             handlers.list_providers),
)


def one_line(message: str) -> str:
    """A message safe for the error header: one line, bounded length."""
    line = " ".join(message.split())
    if len(line) > _MAX_MESSAGE_CHARS:
        line = line[: _MAX_MESSAGE_CHARS - 3] + "..."
    return line or "error"


def classify(error: Exception, endpoint: str) -> tuple[ErrorCode, str]:
    """The error code and user-facing line for a failed request; logs what needs a look."""
    # msgspec.ValidationError subclasses DecodeError, so it is checked first.
    if isinstance(error, msgspec.ValidationError):
        return ErrorCode.INVALID_ARGUMENT, handlers.describe_validation_error(str(error))
    if isinstance(error, msgspec.DecodeError):
        return ErrorCode.INVALID_ARGUMENT, f"malformed request: {error}"
    if isinstance(error, ValidationError):
        return ErrorCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, NotFoundError):
        return ErrorCode.NOT_FOUND, str(error)
    if isinstance(error, PreconditionError):
        return ErrorCode.FAILED_PRECONDITION, str(error)
    if isinstance(error, TimeoutError):
        log.warning("%s: no answer within the request deadline", endpoint)
        return ErrorCode.UNAVAILABLE, "the api did not answer in time; try again shortly"
    if isinstance(error, _UNAVAILABLE):
        log.warning("%s: database unavailable: %s", endpoint, error)
        return ErrorCode.UNAVAILABLE, UNAVAILABLE_MESSAGE
    _log_failure(endpoint, error)
    return ErrorCode.INTERNAL, INTERNAL_MESSAGE


def _log_failure(endpoint: str, error: Exception) -> None:
    if isinstance(error, asyncpg.PostgresError):
        # str() of a PostgreSQL error appends DETAIL, which quotes the failing row and so the
        # job's env values (secrets): log the frames and the bare message only.
        frames = "".join(traceback.format_tb(error.__traceback__))
        log.error("%s: request failed: %s (sqlstate %s): %s\n%s", endpoint,
                  type(error).__name__, error.sqlstate, error.args[0], frames.rstrip())
    else:
        log.error("%s: request failed", endpoint, exc_info=error)


class ApiService(HodeiService):
    """Answers ``hodei.api.*`` requests from the CLI and other callers."""

    name: ClassVar[str] = "api"
    description: ClassVar[str] = "Hodei API: submit, get, list, cancel and audit jobs"

    def __init__(self, settings: ApiSettings) -> None:
        super().__init__(settings)
        self.api_settings = settings
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.api_max_in_flight)

    @property
    def requests_in_flight(self) -> int:
        """How many requests this replica is working on right now."""
        return len(self._in_flight)

    async def setup(self) -> None:
        """Add one micro endpoint per API subject, all in the shared queue group."""
        for endpoint in ENDPOINTS:
            await self.micro.add_endpoint(
                name=endpoint.name,
                subject=endpoint.subject,
                handler=self._dispatcher(endpoint),
                queue_group=subjects.API_QUEUE_GROUP,
            )

    async def stop_fetching(self) -> None:
        """Let the requests in flight finish (up to the grace period), then cancel them."""
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(self._in_flight, timeout=self.settings.drain_grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("api: cancelled %d requests still in flight", len(pending))
            await asyncio.wait(pending)

    def _dispatcher(self, endpoint: Endpoint[Any]) -> Callable[[Request], Awaitable[None]]:
        # The subscription delivers one message at a time: hand each to its own task, and
        # block delivery (not memory) when this replica already works on enough requests.
        async def dispatch(req: Request) -> None:
            await self._slots.acquire()
            task = asyncio.create_task(self._handle(endpoint, req),
                                       name=f"api:{endpoint.name}")
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

        return dispatch

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def _handle(self, endpoint: Endpoint[Any], req: Request) -> None:
        with tracing.continued_span(
            f"api {endpoint.subject}",
            req.headers,
            kind=SpanKind.SERVER,
            attributes={"messaging.destination.name": endpoint.subject},
        ) as span:
            try:
                body = await self._reply_body(endpoint, req.data)
            except Exception as e:
                code, message = classify(e, endpoint.subject)
                span.set_status(Status(StatusCode.ERROR, code.value))
                await self._respond_error(req, code, message)
            else:
                await self._respond(req, body)

    async def _reply_body(self, endpoint: Endpoint[Any], data: bytes) -> bytes:
        if len(data) > MAX_REQUEST_BYTES:
            raise ValidationError(
                f"request is {len(data)} bytes; at most {MAX_REQUEST_BYTES // 1024} KiB"
            )
        request = endpoint.decode(data)
        async with asyncio.timeout(self.settings.request_timeout_s):
            reply = await endpoint.handler(self.pool, request)
        return msgspec.json.encode(reply)

    async def _respond_error(self, req: Request, code: ErrorCode, message: str) -> None:
        line = one_line(message)
        await self._send(req.respond_error(
            code=str(ERROR_STATUS[code]),
            description=line,
            data=msgspec.json.encode(ErrorReply(code=code, message=line)),
        ))

    async def _respond(self, req: Request, body: bytes) -> None:
        await self._send(req.respond(body))

    async def _send(self, reply: Awaitable[None]) -> None:
        try:
            await reply
        except Exception as e:  # the caller's connection or ours went away; nothing to answer
            log.warning("api: could not send a reply: %s", e)
