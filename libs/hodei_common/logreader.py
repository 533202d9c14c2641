"""Reading a job's log from its stream: everything so far, or everything until the end marker.

Reading starts at the stream's first message for the job, so a reader that attaches after
the job finished still gets every line, then the end marker.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from uuid import UUID

import msgspec
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from hodei_common.contracts import subjects
from hodei_common.contracts.logs import LogEnd, LogMessage


async def _last_seq(js: JetStreamContext, job_id: UUID) -> int:
    """The stream sequence of the job's newest log message, 0 when it has none."""
    try:
        last = await js.get_last_msg(subjects.LOGS_STREAM, subjects.job_logs(job_id))
    except NotFoundError:
        return 0
    return int(last.seq or 0)


async def read_log(
    js: JetStreamContext, job_id: UUID, *, follow: bool, idle_timeout_s: float | None = None
) -> AsyncIterator[LogMessage]:
    """Yield the job's log messages in order.

    Without ``follow`` it stops at the newest message that existed when called; with it, it
    stops after the end marker (or when nothing arrives for ``idle_timeout_s``, if given).
    """
    until = None if follow else await _last_seq(js, job_id)
    if until == 0:
        return
    sub = await js.subscribe(
        subjects.job_logs(job_id),
        stream=subjects.LOGS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        # Backstop only: the consumer is deleted below; a reader that dies leaves one that
        # the server drops this long after its interest went away.
        inactive_threshold=5.0,
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_timeout_s or 3600.0)
            except NatsTimeoutError:
                if idle_timeout_s is not None:
                    return
                continue
            message = msgspec.json.decode(msg.data, type=LogMessage)
            yield message
            if isinstance(message, LogEnd):
                return
            if until is not None and msg.metadata.sequence.stream >= until:
                return
    finally:
        # Every `job run` and `job logs` makes a consumer; leaving them to expire piles up
        # thousands under load and the stream refuses new readers.
        with contextlib.suppress(NatsError, TimeoutError):
            name = (await sub.consumer_info()).name
            await sub.unsubscribe()
            if name:
                await js.delete_consumer(subjects.LOGS_STREAM, name)
