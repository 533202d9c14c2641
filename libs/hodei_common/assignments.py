"""Sending a committed assignment to its worker: the scheduler's dispatch passes and the api's
assignments at submit (a job that found an idle worker) send them alike.

The assignment goes on the worker's ``worker.<id>.assign`` subject (WORKER_ASSIGN), with a
Nats-Msg-Id of the job's attempt, so a copy sent again is stored once; and the job's log is
told that the attempt is that worker's (a ``LogStart`` on the platform's log subject). A
failed delivery is retried by the scheduler's housekeeping, which sends again whatever
assignment no agent accepted within ``HODEI_ASSIGNMENT_RESEND_S``.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import msgspec
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from hodei_common import tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Assignment
from hodei_common.contracts.logs import LogStart

log = logging.getLogger(__name__)

MARK_ATTEMPTS = 5


def assignment_from_row(row: asyncpg.Record, log_max_bytes: int | None = None) -> Assignment:
    """The assignment of a job row as the statement that assigned it returns it (id, attempt,
    worker_id, namespace, command, args, env, timeout_s, assigned_at)."""
    return Assignment(
        job_id=row["id"],
        attempt=row["attempt"],
        worker_id=row["worker_id"],
        namespace=row["namespace"],
        command=row["command"],
        args=list(row["args"]),
        env=dict(row["env"]),
        timeout_s=row["timeout_s"],
        assigned_at=row["assigned_at"],
        log_max_bytes=log_max_bytes,
    )


class AssignmentSender:
    """Publishes assignments for ``actor`` (its span is ``<actor> assign``), each carrying
    the platform's log cap ``log_max_bytes`` (None: none)."""

    def __init__(self, js: JetStreamContext, actor: str, log_max_bytes: int | None) -> None:
        self._js = js
        self._span = f"{actor} assign"
        self._log_max_bytes = log_max_bytes

    async def send(self, row: asyncpg.Record) -> None:
        """Publish the assignment of a job row just assigned (with its ``traceparent``) to
        its worker, and to the job's log that the attempt is that worker's, in a span of the
        job's trace. The two go out together, the marker first: readers hold an attempt's
        lines until its marker came, whichever the stream stores first."""
        assignment = assignment_from_row(row, self._log_max_bytes)
        with tracing.job_span(self._span, row["traceparent"], assignment.job_id,
                              attempt=assignment.attempt, worker_id=assignment.worker_id,
                              kind=SpanKind.PRODUCER):
            await asyncio.gather(self._mark(assignment), self._deliver(assignment))

    async def _deliver(self, assignment: Assignment) -> None:
        """A failure is retried by the scheduler's housekeeping (the assignment is not
        accepted meanwhile)."""
        try:
            await self._js.publish(
                subjects.worker_assign(assignment.worker_id),
                msgspec.json.encode(assignment),
                headers=tracing.inject({subjects.HEADER_MSG_ID: subjects.msg_id(
                    assignment.job_id, assignment.attempt, "assign")}),
            )
        except (NatsError, OSError, TimeoutError) as e:
            log.warning("job %s: could not send its assignment (%s)", assignment.job_id, e)

    async def _mark(self, assignment: Assignment) -> None:
        """A failure is retried here: nothing resends what a worker has taken."""
        start = msgspec.json.encode(LogStart(
            job_id=assignment.job_id, attempt=assignment.attempt,
            worker_id=assignment.worker_id))
        subject = subjects.platform_logs(assignment.namespace, assignment.job_id)
        for attempt in range(1, MARK_ATTEMPTS + 1):
            try:
                await self._js.publish(subject, start, headers=tracing.inject({}))
                return
            except (NatsError, OSError, TimeoutError) as e:
                log.warning("job %s: could not mark attempt %d in its log (%s; try %d of %d)",
                            assignment.job_id, assignment.attempt, e, attempt, MARK_ATTEMPTS)
