"""``hodei job run`` and ``hodei job logs``: a job's output, live, from its first line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import msgspec
from opentelemetry.trace import SpanKind

from hodei_cli.connection import api_client
from hodei_cli.logview import LogPrinter
from hodei_cli.statusline import StatusLine, while_waiting
from hodei_common import tracing
from hodei_common.client import ApiClient
from hodei_common.contracts.api import SubmitJob, SubmitJobReply
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.logs import LogBatch, LogEnd, LogMessage
from hodei_common.errors import NotFoundError
from hodei_common.logreader import LiveLog, LogReader

EXIT_TIMED_OUT = 124
EXIT_CANCELLED = 130
# A finished job's reader that hears nothing for this long finds its log gone.
GONE_AFTER_S = 5.0


def status_line() -> StatusLine | None:
    """The line saying why a job waits: only on a terminal's stderr."""
    return StatusLine.on_stderr() if sys.stderr.isatty() else None


def exit_code_for(end: LogEnd) -> int:
    """The CLI's exit code for a finished job: the command's own, 124 timeout, 130 cancel."""
    if end.state is JobState.SUCCEEDED:
        return 0
    if end.state is JobState.TIMED_OUT:
        return EXIT_TIMED_OUT
    if end.state is JobState.CANCELLED:
        return EXIT_CANCELLED
    if end.exit_code is not None and 0 < end.exit_code < 256:
        return end.exit_code
    return 1


def describe_end(end: LogEnd) -> str | None:
    """One line for stderr when the job did not simply succeed."""
    if end.state is JobState.SUCCEEDED:
        return None
    detail = f": {end.error}" if end.error and end.error != f"exit code {end.exit_code}" else ""
    code = f" (exit code {end.exit_code})" if end.exit_code is not None else ""
    return f"job {end.job_id} {end.state.value}{code}{detail}"


async def print_log(
    messages: AsyncIterator[LogMessage],
    printer: LogPrinter | None = None,
    reader: LogReader | None = None,
) -> int | None:
    """Print log messages; return the job's exit code when the end marker came. With a
    ``reader``, the printer's tail is released once the reader caught up."""
    printer = printer or LogPrinter()
    if reader is not None and reader.caught_up:
        printer.release_tail()
    async for message in messages:
        if isinstance(message, LogBatch):
            printer.batch(message)
            if reader is not None and reader.caught_up:
                printer.release_tail()
            continue
        printer.release_tail()
        note = describe_end(message)
        if note:
            printer.note(note)
        return exit_code_for(message)
    printer.release_tail()
    return None


async def queue_job(api: ApiClient, request: SubmitJob) -> SubmitJobReply:
    """Submit as the root span of the job's trace (the id is chosen here, so the span names
    the job from the start)."""
    request = msgspec.structs.replace(request, id=request.id or uuid4())
    assert request.id is not None
    tracing.use_service("cli")
    with tracing.job_span("cli job queue", None, request.id, kind=SpanKind.CLIENT):
        return await api.submit(request)


async def run_job(request: SubmitJob, *, detach: bool) -> int:
    """Submit, then follow the log to the end; Ctrl-C cancels the job and exits 130.

    The log is listened to before the job exists (the job's id is chosen here), so no line
    can come before the CLI is there to print it. On a terminal, a status line says why the
    job waits until it runs or prints.
    """
    request = msgspec.structs.replace(request, id=request.id or uuid4())
    assert request.id is not None
    # The root of the job's trace: every step of the job, to the end of its log, is under it.
    tracing.use_service("cli")
    with tracing.job_span("cli job run", None, request.id, kind=SpanKind.CLIENT):
        return await _run_job(request, detach=detach)


async def _run_job(request: SubmitJob, *, detach: bool) -> int:
    assert request.id is not None
    async with api_client() as api:
        if detach:
            print((await api.submit(request)).job.id)
            return 0
        live = await LiveLog(api.nc, api.nc.jetstream(), api.namespace, request.id).open()
        try:
            job = (await api.submit(request)).job
        except BaseException:
            await live.close()
            raise
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        printer = LogPrinter()
        printer.status = status_line()
        try:
            async with while_waiting(api, job.id, job.state, printer.status):
                following = asyncio.create_task(print_log(live.messages(), printer))
                stop = asyncio.create_task(interrupted.wait())
                await asyncio.wait([following, stop], return_when=asyncio.FIRST_COMPLETED)
                if following.done():
                    stop.cancel()
                    return following.result() or 0
                printer.end_status()
                following.cancel()
                await api.cancel(job.id)
                printer.note(f"job {job.id} cancelled")
                return EXIT_CANCELLED
        finally:
            loop.remove_signal_handler(signal.SIGINT)


async def show_logs(
    job_id: UUID, *, follow: bool, printer: LogPrinter | None = None
) -> int:
    """Print a job's log so far (or until it ends, with ``follow``); from the stream or, once
    the job is archived, the archive. Following, on a terminal, a status line says why the
    job waits until it runs or prints."""
    printer = printer or LogPrinter()
    async with api_client() as api:
        # A clear "not found" for an unknown job, and for another namespace's; the log is read
        # in the job's namespace, the one NATS permissions let this caller read.
        job = await api.get(job_id)
        reader = LogReader(api.nc.jetstream(), job.namespace, job_id)
        # A finished job's log is complete: its end marker is there or a moment away.
        idle = GONE_AFTER_S if job.state.terminal else None
        reading = reader.messages(follow=follow or job.state.terminal, idle_timeout_s=idle)
        if follow:
            printer.status = status_line()
        waiting = while_waiting(api, job_id, job.state, printer.status)
        async with waiting, contextlib.aclosing(reading) as messages:
            code = await print_log(messages, printer, reader)
    if code is None and job.state.terminal and not printer.lines:
        raise NotFoundError(f"the log of job {job_id} is no longer kept (past its retention)")
    return 0 if code is None or not follow else code
