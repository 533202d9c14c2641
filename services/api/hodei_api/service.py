"""The API service: the ``hodei-api`` micro endpoints, a namespace's jobs under
``hodei.api.<namespace>.jobs.*`` and what spans namespaces under ``hodei.admin.*``.

Requests are worked concurrently (up to ``api_max_in_flight`` per replica) by the shared
:class:`~hodei_common.endpoints.EndpointServer`; the queue group spreads them over replicas.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import asyncpg
import msgspec

from hodei_api import handlers
from hodei_api.config import ApiSettings
from hodei_api.explain import explain_job
from hodei_api.intake import Intake
from hodei_common import messaging
from hodei_common.assignments import AssignmentSender
from hodei_common.contracts import subjects
from hodei_common.contracts.api import (
    CancelJobReply,
    GetJob,
    JobRef,
    ListJobs,
    ListProviders,
    ListWorkers,
    SubmitJob,
    SubmitJobReply,
    UpdateProvider,
)
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.workers import WorkerMode
from hodei_common.endpoints import (
    UNAVAILABLE_MESSAGE,
    AnyEndpoint,
    Endpoint,
    EndpointServer,
    NamespacedEndpoint,
    internal_message,
)
from hodei_common.runner import HodeiService

INTERNAL_MESSAGE = internal_message("api")
__all__ = ["INTERNAL_MESSAGE", "UNAVAILABLE_MESSAGE", "ApiService"]

Handler = Callable[[asyncpg.Pool, Any], Awaitable[msgspec.Struct]]
JobHandler = Callable[[asyncpg.Pool, str, Any], Awaitable[msgspec.Struct]]
# A namespace's job endpoints but jobs.submit (which also wakes the schedulers) and
# jobs.cancel (both count jobs).
JOB_ENDPOINTS: tuple[tuple[str, str, type[msgspec.Struct], JobHandler], ...] = (
    ("jobs_get", subjects.JOBS_GET, GetJob, handlers.get_job),
    ("jobs_list", subjects.JOBS_LIST, ListJobs, handlers.list_jobs),
    ("jobs_events", subjects.JOBS_EVENTS, JobRef, handlers.job_events),
    ("jobs_explain", subjects.JOBS_EXPLAIN, JobRef, explain_job),
)
# What spans namespaces, for admins alone.
ADMIN_ENDPOINTS: tuple[tuple[str, str, type[msgspec.Struct], Handler], ...] = (
    ("workers_list", subjects.ADMIN_WORKERS_LIST, ListWorkers, handlers.list_workers),
    ("providers_list", subjects.ADMIN_PROVIDERS_LIST, ListProviders, handlers.list_providers),
    ("providers_update", subjects.ADMIN_PROVIDERS_UPDATE, UpdateProvider,
     handlers.update_provider),
)


class ApiService(HodeiService):
    """Answers ``hodei.api.*`` and ``hodei.admin.*`` requests from the CLI and other callers."""

    name: ClassVar[str] = "api"
    description: ClassVar[str] = "Hodei API: submit, get, list, cancel and audit jobs"
    settings: ApiSettings

    def __init__(self, settings: ApiSettings) -> None:
        super().__init__(settings)
        self.endpoints = EndpointServer(
            "api", max_in_flight=settings.api_max_in_flight,
            deadline_s=settings.request_timeout_s,
            describe_invalid=handlers.describe_validation_error,
            observe=self._observe_request,
        )

    def _observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        self.metrics.api_requests.labels(endpoint, code).inc()
        self.metrics.api_request_seconds.labels(endpoint).observe(seconds)

    @property
    def requests_in_flight(self) -> int:
        """How many requests this replica is working on right now."""
        return self.endpoints.in_flight

    async def setup(self) -> None:
        """Add one micro endpoint per API subject, all in the shared queue group: the job
        endpoints on every namespace's subject, the admin endpoints on their own."""
        self._assignments = AssignmentSender(self.js, "api", self.platform.log_cap)
        self._intake = Intake(self.pool, assign_now=self.settings.api_assign_at_submit)
        endpoints: list[AnyEndpoint] = [
            NamespacedEndpoint("jobs_submit", subjects.api_any(subjects.JOBS_SUBMIT), SubmitJob,
                               self._submit),
            NamespacedEndpoint("jobs_cancel", subjects.api_any(subjects.JOBS_CANCEL), JobRef,
                               self._cancel),
            *(NamespacedEndpoint(name, subjects.api_any(endpoint), request_type,
                                 functools.partial(handler, self.pool))
              for name, endpoint, request_type, handler in JOB_ENDPOINTS),
            *(Endpoint(name, subject, request_type, functools.partial(handler, self.pool))
              for name, subject, request_type, handler in ADMIN_ENDPOINTS),
        ]
        await self.endpoints.add(self.micro, endpoints, subjects.API_QUEUE_GROUP)

    async def _submit(self, namespace: str, request: SubmitJob) -> SubmitJobReply:
        submitted = await self._intake.submit(namespace, request)
        reply, row = submitted.reply, submitted.assigned
        if not reply.created:
            return reply
        self.metrics.jobs_submitted.labels(request.provider).inc()
        if row is not None:
            # Sent before the reply: the job's first line is what a caller waits for.
            await self._assignments.send(row)
        # A job left QUEUED waits for a dispatch pass; a worker taken from a warm pool that
        # should be made up for (an ephemeral one never comes back) asks for one too.
        if row is None or row["worker_mode"] == WorkerMode.EPHEMERAL or row["pool_short"]:
            await messaging.wake_scheduler(self.nc, reply.job.id)
        return reply

    async def _cancel(self, namespace: str, request: JobRef) -> CancelJobReply:
        reply = await handlers.cancel_job(self.pool, namespace, request)
        if reply.cancelled:  # a QUEUED job, ended here; a running one ends by its report
            self.metrics.job_finished(reply.job.provider, JobState.CANCELLED,
                                      created_at=reply.job.created_at, started_at=None,
                                      completed_at=None)
        return reply

    async def stop_fetching(self) -> None:
        """Let the requests in flight finish (up to the grace period), then cancel them."""
        await self.endpoints.drain(self.settings.drain_grace_s)
