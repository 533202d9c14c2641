"""Acknowledged JetStream publishes with retries, and the status reports built on them."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import msgspec
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from hodei_common import tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import Assignment, Outcome, StatusKind, StatusReport
from hodei_common.errors import HodeiError

log = logging.getLogger(__name__)


class PublishError(HodeiError):
    """JetStream did not acknowledge a message after every retry."""


def retry_delay_s(failures: int) -> float:
    """Backoff before the next try after ``failures`` failed ones."""
    return float(min(0.1 * 2 ** max(failures - 1, 0), 5.0))


async def publish_acked(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    msg_id: str,
    *,
    attempts: int,
    timeout_s: float,
) -> None:
    """Publish until JetStream acks; ``msg_id`` makes a retried copy a no-op on the stream."""
    headers = tracing.inject({subjects.HEADER_MSG_ID: msg_id})
    for failures in range(1, attempts + 1):
        try:
            await js.publish(subject, payload, timeout=timeout_s, headers=headers)
        except NatsError as e:  # timeouts, no stream responders, reconnecting, API errors
            if failures == attempts:
                reason = str(e) or type(e).__name__
                raise PublishError(f"publishing {msg_id} on {subject} failed: {reason}") from e
            log.warning("publish of %s on %s failed (%s); retrying", msg_id, subject, e)
            await asyncio.sleep(retry_delay_s(failures))
        else:
            return


class StatusReporter:
    """Reports one assignment's steps on ``worker.<id>.status``, fenced by (job, attempt)."""

    def __init__(
        self, js: JetStreamContext, assignment: Assignment, *, attempts: int, timeout_s: float
    ) -> None:
        self._js = js
        self._assignment = assignment
        self._attempts = attempts
        self._timeout_s = timeout_s

    async def report(
        self,
        kind: StatusKind,
        *,
        outcome: Outcome | None = None,
        exit_code: int | None = None,
        error: str | None = None,
        duration_s: float | None = None,
        log_lines: int | None = None,
        at: datetime | None = None,
        started_at: datetime | None = None,
        leaving: str | None = None,
    ) -> None:
        """Publish one step (that happened ``at``, default now) and wait for JetStream to
        store it."""
        a = self._assignment
        report = StatusReport(
            worker_id=a.worker_id,
            job_id=a.job_id,
            attempt=a.attempt,
            kind=kind,
            at=at or datetime.now(UTC),
            started_at=started_at,
            leaving=leaving,
            outcome=outcome,
            exit_code=exit_code,
            error=error,
            duration_s=duration_s,
            log_lines=log_lines,
        )
        await publish_acked(
            self._js,
            subjects.worker_status(a.worker_id),
            msgspec.json.encode(report),
            subjects.msg_id(a.job_id, a.attempt, kind),
            attempts=self._attempts,
            timeout_s=self._timeout_s,
        )
        log.info("job %s attempt %d: %s%s", a.job_id, a.attempt, kind,
                 f" ({outcome}, exit {exit_code})" if kind is StatusKind.FINISHED else "")
