"""The client of the ``hodei-api`` micro service, as the CLI and tests use it."""

from __future__ import annotations

from typing import Any, TypeVar
from uuid import UUID

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from hodei_common import tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.api import (
    ERROR_STATUS,
    CancelJobReply,
    ErrorCode,
    ErrorReply,
    JobEvents,
    JobExplanation,
    JobList,
    JobReply,
    ListJobs,
    ListWorkers,
    ProviderList,
    ProviderReply,
    SubmitJob,
    SubmitJobReply,
    UpdateProvider,
    WorkerList,
)
from hodei_common.contracts.events import DomainEvent
from hodei_common.contracts.jobs import Job, JobState
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE, check_namespace
from hodei_common.contracts.workers import ProviderConfig, Worker, WorkerState
from hodei_common.errors import ApiError, UnavailableError

T = TypeVar("T", bound=msgspec.Struct)

_CODE_BY_STATUS = {str(status): code for code, status in ERROR_STATUS.items()}


def error_from_reply(headers: dict[str, str], data: bytes) -> ApiError:
    """The :class:`ApiError` an error reply stands for, even one not sent by Hodei code."""
    try:
        reply = msgspec.json.decode(data, type=ErrorReply)
    except msgspec.DecodeError:
        # The micro framework's own error replies carry only the two headers.
        status = headers.get(ERROR_CODE_HEADER, "")
        code = _CODE_BY_STATUS.get(status, ErrorCode.INTERNAL)
        return ApiError(str(code), headers.get(ERROR_HEADER) or f"error {status}")
    return ApiError(str(reply.code), reply.message)


class ApiClient:
    """Typed calls to the Hodei API over NATS request/reply; its job calls act in
    ``namespace`` (the subjects they are sent on name it)."""

    def __init__(self, nc: NATS, timeout_s: float = 5.0, *,
                 namespace: str = DEFAULT_NAMESPACE) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.namespace = check_namespace(namespace)

    def jobs_subject(self, endpoint: str) -> str:
        """The subject of a job endpoint in this client's namespace."""
        return subjects.api_ns(self.namespace, endpoint)

    async def request(self, subject: str, data: bytes) -> bytes:
        """Send raw bytes; return the reply's bytes or raise ApiError/UnavailableError."""
        try:
            msg = await self.nc.request(
                subject, data, timeout=self.timeout_s, headers=tracing.inject()
            )
        except NoRespondersError:
            raise UnavailableError(
                f"the Hodei API is not running (nobody answers {subject})"
            ) from None
        except NatsTimeoutError as e:
            raise UnavailableError(
                f"the Hodei API did not answer {subject} within {self.timeout_s:g}s"
            ) from e
        headers = msg.headers or {}
        if ERROR_CODE_HEADER in headers:
            raise error_from_reply(headers, msg.data)
        return bytes(msg.data)

    async def _call(self, subject: str, payload: Any, reply_type: type[T]) -> T:
        data = await self.request(subject, msgspec.json.encode(payload))
        try:
            return msgspec.json.decode(data, type=reply_type)
        except msgspec.DecodeError as e:
            raise ApiError(str(ErrorCode.INTERNAL), f"unreadable reply on {subject}: {e}") from e

    async def submit(self, job: SubmitJob) -> SubmitJobReply:
        """Queue a job (or find the one an idempotency key already queued)."""
        return await self._call(self.jobs_subject(subjects.JOBS_SUBMIT), job, SubmitJobReply)

    async def get(self, job_id: UUID | str, *, show_env: bool = False) -> Job:
        """One job by id; its env values only with ``show_env`` (else just ``env_keys``)."""
        request = {"id": str(job_id), "show_env": show_env}
        reply = await self._call(self.jobs_subject(subjects.JOBS_GET), request, JobReply)
        return reply.job

    async def list_jobs(self, state: JobState | None = None, limit: int = 50) -> list[Job]:
        """The namespace's jobs newest first, optionally of one state."""
        query = ListJobs(state=state, limit=limit)
        return (await self._call(self.jobs_subject(subjects.JOBS_LIST), query, JobList)).jobs

    async def cancel(self, job_id: UUID | str) -> CancelJobReply:
        """Cancel a queued job, or ask a running one to stop."""
        subject = self.jobs_subject(subjects.JOBS_CANCEL)
        return await self._call(subject, {"id": str(job_id)}, CancelJobReply)

    async def explain(self, job_id: UUID | str) -> JobExplanation:
        """Where a job is, what it waits for, and what last went wrong."""
        subject = self.jobs_subject(subjects.JOBS_EXPLAIN)
        return await self._call(subject, {"id": str(job_id)}, JobExplanation)

    async def events(self, job_id: UUID | str) -> list[DomainEvent]:
        """A job's audit events, oldest first."""
        subject = self.jobs_subject(subjects.JOBS_EVENTS)
        reply = await self._call(subject, {"id": str(job_id)}, JobEvents)
        return reply.events

    async def list_workers(
        self, state: WorkerState | None = None, limit: int = 100
    ) -> list[Worker]:
        """Workers newest first, optionally of one state."""
        query = ListWorkers(state=state, limit=limit)
        return (await self._call(subjects.ADMIN_WORKERS_LIST, query, WorkerList)).workers

    async def update_provider(self, request: UpdateProvider) -> ProviderConfig:
        """Change a provider's configuration; the fields left None stay as they are."""
        reply = await self._call(subjects.ADMIN_PROVIDERS_UPDATE, request, ProviderReply)
        return reply.provider

    async def list_providers(self) -> list[ProviderConfig]:
        """Every provider configuration, by name."""
        return (await self._call(subjects.ADMIN_PROVIDERS_LIST, {}, ProviderList)).providers
