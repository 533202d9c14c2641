"""One assignment on this worker: the process and its logs, STARTED, FINISHED.

The agent starts its job as soon as the assignment arrives, so STARTED also says it was
accepted (one report fewer per job); a job that cannot start is reported FINISHED at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from nats.js import JetStreamContext

from hodei_agent.config import AgentSettings
from hodei_agent.jobuser import hand_over
from hodei_agent.logstream import LogPublisher, pump_lines
from hodei_agent.oom import OOM_KILLED, make_first_victim, oom_killed_since, oom_kills
from hodei_agent.process import JobProcess, command_line, job_environment, kill_group, spawn
from hodei_agent.reporting import PublishError, StatusReporter
from hodei_common.contracts.agent import Assignment, Outcome, StatusKind
from hodei_common.contracts.logs import LogStream

log = logging.getLogger(__name__)

# After the job's group is gone its pipes close at once, unless a process escaped the group
# (setsid) still holds them: then its output is given up on after this long.
READ_DRAIN_S = 10.0


@dataclass(frozen=True)
class JobResult:
    """How the job ended, as the FINISHED report says it."""

    outcome: Outcome
    exit_code: int | None = None
    error: str | None = None
    duration_s: float = 0.0
    log_lines: int = 0
    started_at: datetime | None = None  # set when no STARTED report was sent


def exit_result(returncode: int) -> tuple[Outcome, int, str | None]:
    """Outcome, exit code (128+N for signal N, as shells say it) and error of an exit."""
    if returncode == 0:
        return Outcome.SUCCEEDED, 0, None
    if returncode < 0:
        code = 128 - returncode
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return Outcome.FAILED, code, f"killed by {name} (exit {code})"
    if returncode == 127:
        return Outcome.FAILED, 127, "command not found (exit 127)"
    if returncode == 126:
        return Outcome.FAILED, 126, "command not executable (exit 126)"
    return Outcome.FAILED, returncode, f"exit code {returncode}"


def signal_code(returncode: int | None) -> int | None:
    """The exit code of a process we killed (None when it is unknown)."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


class Workdirs:
    """Jobs' working directories, the next one made ahead: while the agent waits for a job,
    not on the job's way to its start. A directory is a metadata write, which waits for the
    filesystem's journal when something else commits one (a database's fsync on the same disk
    held it ~1 ms a job).

    Each is fresh and the job's own: ``job-<job id>-*`` under ``worker_workdir`` (else the
    temp dir), made the job user's when there is one. One made ahead is ``job-next-*`` until a
    job takes it (renamed then, in the same directory)."""

    def __init__(self, settings: AgentSettings) -> None:
        self._settings = settings
        self._spare: Path | None = None

    def prepare(self) -> None:
        """Make the next job's directory unless one waits; a failure is left to that job.
        Made on the agent's loop: it waits for a job meanwhile, and a thread would cost more
        CPU than the directory."""
        if self._spare is None:
            with contextlib.suppress(OSError):
                self._spare = self._make("next")

    def take(self, job_id: UUID) -> Path:
        """A fresh directory for ``job_id``: the one made ahead, else one made now."""
        spare, self._spare = self._spare, None
        if spare is not None:
            named = spare.with_name(spare.name.replace("job-next-", f"job-{job_id}-", 1))
            try:
                spare.rename(named)
            except OSError:  # gone meanwhile, or its base changed: make one now
                shutil.rmtree(spare, ignore_errors=True)
            else:
                return named
        return self._make(str(job_id))

    def discard(self) -> None:
        """Remove the directory made ahead (the agent leaves)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            shutil.rmtree(spare, ignore_errors=True)

    def _make(self, label: str) -> Path:
        base = self._settings.worker_workdir
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{label}-", dir=base))
        user = self._settings.job_user()
        if user is not None:
            try:
                hand_over(workdir, user)
            except OSError:
                workdir.rmdir()
                raise
        return workdir


class StartedReport:
    """STARTED, sent a moment after the start unless the job is over by then."""

    def __init__(self, reporter: StatusReporter, at: datetime, delay_s: float) -> None:
        self.at = at
        self._sending = False
        self._task = asyncio.create_task(self._send_later(reporter, delay_s))

    async def _send_later(self, reporter: StatusReporter, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._sending = True
        await reporter.report(StatusKind.STARTED, at=self.at)

    async def settle(self) -> datetime | None:
        """Once the job is over: when it started if STARTED was never sent (FINISHED says it
        then), else None once STARTED is stored. Raises PublishError if that failed."""
        if not self._sending:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            return self.at
        await self._task
        return None

    def abort(self) -> None:
        self._task.cancel()


class JobRun:
    """Runs one assignment and reports it; :meth:`cancel` kills it from outside."""

    def __init__(
        self,
        js: JetStreamContext,
        assignment: Assignment,
        settings: AgentSettings,
        leaving: Callable[[], str | None],
        workdirs: Workdirs,
    ) -> None:
        self.assignment = assignment
        self._workdirs = workdirs
        self._leaving = leaving  # asked as the job ends: will the agent exit after it?
        self._js = js
        self._settings = settings
        self._reporter = StatusReporter(
            js, assignment, attempts=settings.publish_attempts, timeout_s=settings.publish_timeout_s
        )
        self._cancelled = asyncio.Event()
        self._cancel_reason = ""
        self._abandoned = False

    def abandon(self) -> None:
        """Have the job's end go unreported (then :meth:`cancel` it): its worker is taken
        away under it and the platform runs it again."""
        self._abandoned = True

    def cancel(self, reason: str) -> None:
        """Kill the job's process group and report it CANCELLED (idempotent)."""
        if not self._cancelled.is_set():
            self._cancel_reason = reason
            self._cancelled.set()

    async def run(self) -> JobResult:
        """Run, report STARTED then FINISHED. Raises PublishError when NATS is lost."""
        try:
            workdir = self._workdirs.take(self.assignment.job_id)
        except OSError as e:
            result = JobResult(Outcome.FAILED, error=f"cannot create a working directory: {e}")
            await self._finished(result)
            return result
        try:
            result = await self._execute(workdir)
            # Reported before the directory goes: the job (all its processes) is over.
            await self._finished(result)
        finally:
            await _remove(workdir)
        return result

    async def _finished(self, result: JobResult) -> None:
        if self._abandoned:
            log.info("job %s attempt %d: abandoned (%s), not reported",
                     self.assignment.job_id, self.assignment.attempt, self._cancel_reason)
            return
        await self._reporter.report(
            StatusKind.FINISHED,
            outcome=result.outcome,
            exit_code=result.exit_code,
            error=result.error,
            duration_s=result.duration_s,
            log_lines=result.log_lines,
            started_at=result.started_at,
            leaving=self._leaving(),
        )

    async def _execute(self, workdir: Path) -> JobResult:
        a = self.assignment
        if self._cancelled.is_set():
            return JobResult(Outcome.CANCELLED, error=self._cancel_message())
        user = self._settings.job_user()
        env = job_environment(a.env, workdir, user=user)
        started_monotonic = time.monotonic()
        ooms = oom_kills()
        try:
            proc = await spawn(command_line(a.command, a.args), env, workdir, user)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the command or env
            return JobResult(Outcome.FAILED, error=f"cannot start the command: {e}")
        make_first_victim(proc.pgid)
        started = StartedReport(self._reporter, datetime.now(UTC),
                                self._settings.report_started_after_s)
        logs = self._log_publisher()
        logs.start()
        try:
            result = await self._supervise(proc, logs)
            if result.outcome is Outcome.FAILED and oom_killed_since(ooms):
                result = replace(result, error=f"{OOM_KILLED}: the job ran out of memory "
                                               f"({result.error})")
        except BaseException:
            started.abort()
            await logs.abort()
            await kill_group(proc, 0.0)
            raise
        duration = time.monotonic() - started_monotonic
        try:
            lines = await logs.close()
        except PublishError as e:
            return JobResult(Outcome.FAILED, result.exit_code,
                             f"the job's output could not be published: {e}", duration, logs.count,
                             await started.settle())
        return JobResult(result.outcome, result.exit_code, result.error, duration, lines,
                         await started.settle())

    def _log_publisher(self) -> LogPublisher:
        s = self._settings
        return LogPublisher(
            self._js,
            self.assignment.job_id,
            self.assignment.attempt,
            namespace=self.assignment.namespace,
            worker_id=self.assignment.worker_id,
            max_lines=s.log_batch_lines,
            max_bytes=s.log_batch_bytes,
            linger_s=s.log_linger_s,
            max_in_flight=s.log_max_in_flight,
            publish_attempts=s.publish_attempts,
            publish_timeout_s=s.publish_timeout_s,
            max_total_bytes=self.assignment.log_max_bytes,
        )

    def _cancel_message(self) -> str:
        return f"cancelled: {self._cancel_reason}" if self._cancel_reason else "cancelled"

    async def _supervise(self, proc: JobProcess, logs: LogPublisher) -> JobResult:
        """Wait for the exit, the timeout, a cancel or a log failure; leave no process behind."""
        stdout, stderr = proc.stdout, proc.stderr
        max_line = self._settings.log_max_line_bytes
        readers = [
            asyncio.create_task(pump_lines(stdout, LogStream.STDOUT, logs, max_line)),
            asyncio.create_task(pump_lines(stderr, LogStream.STDERR, logs, max_line)),
        ]
        cancelled = asyncio.ensure_future(self._cancelled.wait())
        try:
            verdict = await self._watch(proc.exited, cancelled, readers)
            # Whether it ended or not, its group goes: stragglers (`sleep 100 &`) included.
            await kill_group(proc, self._settings.kill_grace_s)
            await self._drain(readers)
        finally:
            for task in (cancelled, *readers):
                task.cancel()
        if verdict is not None:
            return JobResult(verdict.outcome, signal_code(proc.returncode), verdict.error)
        assert proc.returncode is not None
        outcome, code, error = exit_result(proc.returncode)
        return JobResult(outcome, code, error)

    async def _watch(
        self,
        exited: asyncio.Future[None],
        cancelled: asyncio.Future[Any],
        readers: list[asyncio.Task[None]],
    ) -> JobResult | None:
        """None when the process exited by itself, else why it must be killed."""
        timeout_s = self.assignment.timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not exited.done():
            watched: set[asyncio.Future[Any]] = {exited, cancelled}
            watched.update(r for r in readers if not r.done())
            done, _ = await asyncio.wait(
                watched, timeout=max(deadline - loop.time(), 0.0),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if exited.done():
                break
            failed = [r.exception() for r in readers if r.done() and r.exception() is not None]
            if failed:
                return JobResult(
                    Outcome.FAILED, error=f"the job's output could not be published: {failed[0]}"
                )
            if cancelled.done():
                return JobResult(Outcome.CANCELLED, error=self._cancel_message())
            if not done:
                return JobResult(Outcome.TIMED_OUT, error=f"timed out after {timeout_s:g}s")
        return None

    async def _drain(self, readers: list[asyncio.Task[None]]) -> None:
        """Let the readers reach EOF (the pipes close once the group is gone)."""
        _, pending = await asyncio.wait(readers, timeout=READ_DRAIN_S)
        if pending:
            log.warning("job %s: its output pipes stayed open after its process group ended "
                        "(a process escaped it?); giving up on the rest of its output",
                        self.assignment.job_id)
        for reader in readers:
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                # The publisher keeps the error; close() raises it for the FINISHED report.
                log.warning("job %s: reading its output failed: %s",
                            self.assignment.job_id, reader.exception())


async def _remove(workdir: Path) -> None:
    """Remove a finished job's directory: at once when the job left it empty (most do: one
    system call, cheaper than handing it to a thread), else in a thread, whatever its size."""
    try:
        os.rmdir(workdir)
    except OSError:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
