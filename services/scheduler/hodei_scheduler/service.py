"""The scheduler service: dispatch loop, dispatch triggers, status reports, cancel orders."""

from __future__ import annotations

import logging
from typing import ClassVar
from uuid import UUID

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from hodei_common import tracing
from hodei_common.consumer import ConsumerSpec, consume, decode
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import StatusReport
from hodei_common.contracts.jobs import JobCancelRequested
from hodei_common.contracts.logs import LogEnd
from hodei_common.errors import PermanentError
from hodei_common.recovery import send_cancel, send_stop
from hodei_common.runner import HodeiService, Loop
from hodei_scheduler import store
from hodei_scheduler.config import SchedulerSettings
from hodei_scheduler.directory import WorkerProviders
from hodei_scheduler.dispatcher import Dispatcher
from hodei_scheduler.reports import ReportHandler

log = logging.getLogger(__name__)

# The events that change what a pass can do and that no wake-up hint announces. A submit and a
# worker's registration announce themselves with the hint, and a worker freed by a report pokes
# the pass itself; their events (job.<id>.created, worker.ready) come to every job, so they are
# not heard: should a hint be lost, the periodic pass finds its job or worker.
JOB_TRIGGERS = ConsumerSpec(
    stream=subjects.JOB_EVENTS_STREAM, durable=subjects.SCHEDULER_DISPATCH_CONSUMER,
    filter_subjects=[subjects.job_events(subjects.JOB_REQUEUED)], ack_batches=True,
)
WORKER_TRIGGERS = ConsumerSpec(
    stream=subjects.WORKER_EVENTS_STREAM, durable=subjects.SCHEDULER_DISPATCH_CONSUMER,
    filter_subjects=[subjects.PROVIDER_UPDATED], ack_batches=True,
)
STATUS_REPORTS = ConsumerSpec(
    stream=subjects.WORKER_STATUS_STREAM, durable=subjects.SCHEDULER_STATUS_CONSUMER,
    ordered_by=lambda msg: msg.subject,  # each worker's reports in order, workers in parallel
)
CANCEL_REQUESTS = ConsumerSpec(
    stream=subjects.JOB_EVENTS_STREAM, durable=subjects.SCHEDULER_CANCEL_CONSUMER,
    filter_subjects=[subjects.job_events(subjects.JOB_CANCEL_REQUESTED)],
)


class SchedulerService(HodeiService):
    """Matches queued jobs to workers and moves jobs along as their agents report."""

    name: ClassVar[str] = "scheduler"
    description: ClassVar[str] = "Hodei scheduler: dispatch and job progress"
    consumers: ClassVar[tuple[ConsumerSpec, ...]] = (
        JOB_TRIGGERS, WORKER_TRIGGERS, STATUS_REPORTS, CANCEL_REQUESTS)
    settings: SchedulerSettings

    def __init__(self, settings: SchedulerSettings) -> None:
        super().__init__(settings)

    async def setup(self) -> None:
        providers = WorkerProviders()
        self.dispatcher = Dispatcher(
            self.pool, self.js, interval_s=self.settings.dispatch_interval_s,
            resend_s=self.settings.assignment_resend_s, providers=providers,
            log_max_bytes=self.platform.log_cap,
        )
        self.reports = ReportHandler(self.pool, providers=providers, effects=self,
                                     metrics=self.metrics)
        await self.nc.subscribe(subjects.SCHEDULER_WAKE, cb=self._poke)

    def loops(self) -> list[Loop]:
        return [self._dispatch, self._job_triggers, self._worker_triggers, self._status,
                self._cancels]

    async def _dispatch(self) -> None:
        await self.dispatcher.run(self.stopping)

    async def _poke(self, msg: Msg) -> None:
        self.dispatcher.poke()

    async def _on_trigger(self, msg: Msg) -> None:
        """Poke, unless a pass began after the event was stored (it saw the commit). Across
        hosts a skewed clock can only delay a job until the periodic pass."""
        if msg.metadata.timestamp.timestamp() >= self.dispatcher.last_pass_started:
            self.dispatcher.poke()

    async def _job_triggers(self) -> None:
        await consume(self.js, JOB_TRIGGERS, self._on_trigger, self.stopping)

    async def _worker_triggers(self) -> None:
        await consume(self.js, WORKER_TRIGGERS, self._on_trigger, self.stopping)

    async def _status(self) -> None:
        await consume(self.js, STATUS_REPORTS, self._on_report, self.stopping)

    async def _cancels(self) -> None:
        await consume(self.js, CANCEL_REQUESTS, self._on_cancel_request, self.stopping)

    async def _on_report(self, msg: Msg) -> None:
        report = decode(msg, StatusReport)
        if msg.subject != subjects.worker_status(report.worker_id):
            raise PermanentError(f"report for worker {report.worker_id} on {msg.subject}")
        await self.reports.apply(report)

    async def _on_cancel_request(self, msg: Msg) -> None:
        event = decode(msg, JobCancelRequested)
        async with self.pool.acquire() as conn:
            target = await store.cancel_target(conn, event.job_id)
        if target is not None:
            await self.send_cancel(event.job_id, target["attempt"], target["worker_id"])

    def wind_down(self) -> None:
        """Request no more workers: the platform is retiring the ones it has."""
        self.dispatcher.provisioning = False

    def worker_freed(self) -> None:
        self.dispatcher.poke()

    async def cancel_pending(self, job_id: UUID, attempt: int, worker_id: UUID) -> None:
        await self.send_cancel(job_id, attempt, worker_id)

    async def job_finished(self, namespace: str, end: LogEnd) -> None:
        """End the job's log at once, as its terminal state commits. The logs service writes
        the same marker from the terminal event (same Nats-Msg-Id): this only saves a hop."""
        try:
            await self.js.publish(
                subjects.platform_logs(namespace, end.job_id), msgspec.json.encode(end),
                headers=tracing.inject({subjects.HEADER_MSG_ID: subjects.msg_id(end.job_id,
                                                                                "end")}),
            )
        except (NatsError, OSError, TimeoutError) as e:
            log.warning("job %s: end of log left to the logs service (%s)", end.job_id, e)

    async def stop_worker(self, worker_id: UUID, reason: str) -> None:
        await send_stop(self.nc, worker_id, reason)

    async def send_cancel(self, job_id: UUID, attempt: int, worker_id: UUID) -> None:
        """Tell a worker to kill its job (the supervisor says it again while unobeyed)."""
        await send_cancel(self.nc, job_id, attempt, worker_id)
