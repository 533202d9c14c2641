"""The logs service: closes every finished job's log with an end-of-log marker.

The marker is written after the job reached its terminal state, and the agent publishes
every line (acknowledged) before it reports the job finished, so the marker is the last
message on ``job.<id>.logs``. A reader can always wait for it.
"""

from __future__ import annotations

import logging
from typing import ClassVar
from uuid import UUID

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from hodei_common import tracing
from hodei_common.consumer import ConsumerSpec, consume, decode
from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobEvent, JobState
from hodei_common.contracts.logs import LogEnd, LogMessage
from hodei_common.errors import RetryLater
from hodei_common.runner import HodeiService, Loop
from hodei_logs import store

log = logging.getLogger(__name__)

TERMINAL_EVENTS = ConsumerSpec(
    stream=subjects.JOB_EVENTS_STREAM,
    durable=subjects.LOGS_END_CONSUMER,
    filter_subjects=[subjects.JOB_SUCCEEDED, subjects.JOB_FAILED, subjects.JOB_CANCELLED,
                     subjects.JOB_TIMED_OUT],
)


class LogsService(HodeiService):
    """Writes end-of-log markers (retention and archives come with the log store)."""

    name: ClassVar[str] = "logs"
    description: ClassVar[str] = "Hodei logs: per-job log streams"

    def loops(self) -> list[Loop]:
        return [self._end_markers]

    async def _end_markers(self) -> None:
        await consume(self.js, TERMINAL_EVENTS, self._close_log, self.stopping)

    async def _close_log(self, msg: Msg) -> None:
        event = decode(msg, JobEvent)
        # Usually the scheduler ended the log as the job finished: then there is nothing to do.
        if await self._already_closed(event.job_id):
            return
        async with self.pool.acquire() as conn:
            job = await store.final_state(conn, event.job_id)
        if job is None:
            raise RetryLater(1.0, f"job {event.job_id} is not finished yet")
        marker = LogEnd(job_id=job["id"], attempt=job["attempt"], state=JobState(job["state"]),
                        exit_code=job["exit_code"], error=job["error"])
        await self.js.publish(
            subjects.job_logs(job["id"]), msgspec.json.encode(marker),
            headers=tracing.inject({subjects.HEADER_MSG_ID: subjects.msg_id(job["id"], "end")}),
        )

    async def _already_closed(self, job_id: UUID) -> bool:
        """Whether the log's last message is already its end marker (a redelivery)."""
        try:
            last = await self.js.get_last_msg(subjects.LOGS_STREAM, subjects.job_logs(job_id))
        except NotFoundError:
            return False
        try:
            return isinstance(msgspec.json.decode(last.data or b"", type=LogMessage), LogEnd)
        except msgspec.DecodeError:
            return False
