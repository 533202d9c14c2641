"""The local-process provider: each worker is an agent process on this machine.

The agent is spawned in a session (and so a process group) of its own, with a minimal
environment: the service's database URL and other secrets never reach it. Its stdout and
stderr are appended to ``<workers dir>/<worker id>.log``. The resource id is the pid.

With the default agent command (``<python> -m hodei_agent``) agents are forked from an agent
template (:mod:`.agent_template`) that imported the agent once, instead of each starting a
Python and importing it: the template starts with the provider, and should it be unavailable
an agent is spawned as any other command is.

A pid can be reused once its process is gone, so nothing is killed unless it is provably the
worker's agent: a child this provider spawned (or had the template fork) for that worker and
not yet reaped, or a process whose ``/proc/<pid>/environ`` or command line names the worker
id, or whose pid and start time are those ``<worker id>.pid`` recorded (an agent of an earlier
run of the service).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from uuid import UUID

from hodei_common.contracts.providers import ProviderSettings
from hodei_common.tracing import AGENT_ENV
from hodei_provisioner.providers.agent_template import AgentTemplate, template_command
from hodei_provisioner.providers.base import News, Provider, ProviderError, Verdict, WorkerSpec
from hodei_provisioner.providers.spawning import spawn_in_session

log = logging.getLogger(__name__)

# Variables of the service's own environment an agent gets; everything else is left behind.
INHERITED_ENV = ("PATH", "HOME", "LANG", "HODEI_LOG_LEVEL", "HODEI_LOG_FORMAT",
                 *AGENT_ENV)
_POLL_S = 0.05
# After the template failed to start or exited, agents are spawned one by one this long.
TEMPLATE_RETRY_S = 30.0


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` an agent may see."""
    return {key: environ[key] for key in INHERITED_ENV if key in environ}


@dataclass(eq=False)
class _Child:
    """An agent this provider spawned; ``exited`` resolves (to the exit code) once reaped."""

    pid: int
    worker_id: UUID
    exited: asyncio.Future[int]
    template: AgentTemplate | None = None  # forked by it: it reaps and signals the agent


class LocalProvider(Provider):
    """Workers as local processes running the agent command."""

    kind: ClassVar[str] = "local"
    noun: ClassVar[str] = "process"

    def __init__(
        self,
        command: Sequence[str],
        workers_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        grace_s: float = 2.0,
        template: bool = True,
        template_env: Mapping[str, str] | None = None,
    ) -> None:
        if not command:
            raise ValueError("the agent command must not be empty")
        self._command = list(command)
        self._workers_dir = workers_dir
        self._env = dict(env or {})
        self._grace_s = grace_s
        self._children: dict[int, _Child] = {}
        self._pidfds: dict[int, int] = {}
        self._on_news: Callable[[News], None] | None = None
        self._template_command = template_command(self._command) if template else None
        self._template_env = {**self._env, **(template_env or {})}
        self._template: AgentTemplate | None = None
        self._template_starting: asyncio.Task[AgentTemplate | None] | None = None
        self._template_failed_at: float | None = None

    async def start(self) -> None:
        # The template imports the agent in the background: the first worker need not wait.
        if self._template_command is not None:
            self._template_starting = asyncio.create_task(self._start_template())

    def on_news(self, callback: Callable[[News], None]) -> None:
        self._on_news = callback

    def children(self) -> dict[int, UUID]:
        """The agents spawned here that are still running (not yet reaped), pid -> worker."""
        return {pid: child.worker_id for pid, child in self._children.items()}

    def log_path(self, worker_id: UUID) -> Path:
        """Where the worker's agent writes its stdout and stderr."""
        return self._workers_dir / f"{worker_id}.log"

    def describe(self, resource_id: str) -> str:
        return f"process {resource_id} started"

    async def create(self, spec: WorkerSpec) -> str:
        env = {
            **self._env,
            "HODEI_NATS_URL": spec.nats_url,
            "HODEI_WORKER_ID": str(spec.worker_id),
            **spec.trace_env,
            **spec.secrets(),
        }
        pid = await self._fork(env, spec.worker_id)
        if pid is None:
            try:
                pid = spawn_in_session(self._command, env, self.log_path(spec.worker_id))
            except OSError as e:
                # The error names the command or the log file, never the environment.
                raise ProviderError(
                    f"cannot start the agent ({self._command[0]}): {e.strerror or e}"
                ) from e
            self._watch(pid, spec.worker_id)
        log.info("worker %s: agent started, pid %d", spec.worker_id, pid)
        return str(pid)

    async def destroy(self, resource_id: str, *, worker_id: UUID,
                      settings: ProviderSettings | None = None) -> None:
        pid = _parse_pid(resource_id)
        if pid is None:
            log.warning("worker %s: %r is not a pid; nothing to destroy", worker_id, resource_id)
            return
        child = self._children.get(pid)
        if child is not None:
            if child.worker_id != worker_id:
                log.warning("pid %d is the agent of worker %s, not %s; left alone",
                            pid, child.worker_id, worker_id)
                return
            await self._stop_child(child)
        elif self._is_agent_of(pid, worker_id):
            await self._stop_stranger(pid, worker_id)
        # Otherwise the agent is gone (and the pid free or reused by someone else): done.

    async def exists(self, resource_id: str, *, worker_id: UUID,
                     settings: ProviderSettings | None = None) -> bool:
        pid = _parse_pid(resource_id)
        if pid is None:
            return False
        child = self._children.get(pid)
        if child is not None:
            return child.worker_id == worker_id and not child.exited.done()
        return self._is_agent_of(pid, worker_id)

    async def close(self) -> None:
        # Running agents are left alone on purpose: each finishes its job and exits on its
        # own (or is destroyed by a later provisioner run once reconciliation finds it as an
        # orphan). Only the watching stops; the process's exit reparents them to init.
        loop = asyncio.get_running_loop()
        for pidfd in self._pidfds.values():
            loop.remove_reader(pidfd)
            os.close(pidfd)
        self._pidfds.clear()
        self._children.clear()
        if self._template_starting is not None:
            self._template_starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._template_starting
        if self._template is not None:
            template, self._template = self._template, None
            await template.close()

    # --- the agent template ---------------------------------------------------------------
    def template_pid(self) -> int | None:
        """The running agent template's pid, if there is one."""
        template = self._template
        return template.pid if template is not None and not template.gone else None

    async def _start_template(self) -> AgentTemplate | None:
        assert self._template_command is not None
        template = AgentTemplate(
            self._template_command, self._template_env,
            self._workers_dir / "agent-template.log",
            on_spawned=lambda pid, worker_id: self._adopt(template, pid, worker_id),
            on_exited=self._forked_exited,
            on_gone=lambda: self._template_gone(template),
        )
        try:
            await template.start()
        except (OSError, ProviderError, TimeoutError) as e:
            self._template_failed_at = asyncio.get_running_loop().time()
            log.warning("the agent template did not start (%s); agents are spawned one by "
                        "one for %gs", getattr(e, "strerror", None) or e, TEMPLATE_RETRY_S)
            return None
        self._template = template
        log.info("agent template ready, pid %s", template.pid)
        return template

    async def _ready_template(self) -> AgentTemplate | None:
        """The template to fork from: running, starting (awaited), or started again once
        its retry time has passed; None: spawn the agent instead."""
        if self._template_command is None:
            return None
        if self._template is not None and not self._template.gone:
            return self._template
        starting = self._template_starting
        if starting is None or starting.done():
            failed_at = self._template_failed_at
            loop = asyncio.get_running_loop()
            if failed_at is not None and loop.time() - failed_at < TEMPLATE_RETRY_S:
                return None
            self._template_failed_at = None
            starting = self._template_starting = asyncio.create_task(self._start_template())
        return await asyncio.shield(starting)

    async def _fork(self, env: Mapping[str, str], worker_id: UUID) -> int | None:
        """The pid of an agent forked by the template; None when there is none to ask."""
        template = await self._ready_template()
        if template is None:
            return None
        try:
            return await template.spawn(env, self.log_path(worker_id), worker_id)
        except OSError as e:
            raise ProviderError(f"cannot start the agent: {e.strerror or e}") from e
        except ProviderError as e:  # it went away meanwhile
            log.warning("worker %s: %s; spawning its agent instead", worker_id, e)
            return None

    def _adopt(self, template: AgentTemplate, pid: int, worker_id: UUID) -> None:
        """The template forked ``pid`` for ``worker_id``: ours to watch (by the template's
        word) and, for a later run of the service, known by its pid file."""
        child = _Child(pid, worker_id, asyncio.get_running_loop().create_future(),
                       template=template)
        self._children[pid] = child
        started = _start_time(pid)
        if started is not None:
            with contextlib.suppress(OSError):
                self._pid_path(worker_id).write_text(f"{pid} {started}\n")

    def _forked_exited(self, pid: int, code: int) -> None:
        child = self._children.get(pid)
        if child is not None:
            self._pid_path(child.worker_id).unlink(missing_ok=True)
            self._exited(child, code)

    def _template_gone(self, template: AgentTemplate) -> None:
        """Its agents run on, but nobody tells their exits now: they are strangers (known
        by their pid files), like an earlier run's."""
        if self._template is template:
            self._template = None
            self._template_failed_at = asyncio.get_running_loop().time()
            log.warning("the agent template exited; agents are spawned one by one for %gs",
                        TEMPLATE_RETRY_S)
        for pid, child in list(self._children.items()):
            if child.template is template:
                del self._children[pid]

    def _pid_path(self, worker_id: UUID) -> Path:
        return self._workers_dir / f"{worker_id}.pid"

    def _is_agent_of(self, pid: int, worker_id: UUID) -> bool:
        """Whether live process ``pid`` (not a child) is the worker's agent: its environment
        or command line names the worker, or it is the process its pid file recorded."""
        if _proc_mentions(pid, worker_id):
            return True
        try:
            recorded = self._pid_path(worker_id).read_text().split()
        except OSError:
            return False
        started = _start_time(pid)
        return started is not None and recorded == [str(pid), str(started)]

    # --- reaping -------------------------------------------------------------------------
    def _watch(self, pid: int, worker_id: UUID) -> None:
        loop = asyncio.get_running_loop()
        child = _Child(pid, worker_id, loop.create_future())
        self._children[pid] = child
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: a thread waits for the exit
            threading.Thread(target=_wait_blocking, args=(loop, child, self._exited),
                             name=f"reap-{pid}", daemon=True).start()
        else:
            self._pidfds[pid] = pidfd
            loop.add_reader(pidfd, self._reap, child)

    def _reap(self, child: _Child) -> None:
        """The pidfd became readable: the child exited; collect it so it is no zombie."""
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:  # someone else reaped it
            pid, status = child.pid, -1
        if pid == 0:
            return
        pidfd = self._pidfds.pop(child.pid, None)
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)
        self._exited(child, _exit_code(status))

    def _exited(self, child: _Child, code: int) -> None:
        if self._children.get(child.pid) is child:
            del self._children[child.pid]
        if not child.exited.done():
            child.exited.set_result(code)
        log.info("worker %s: agent (pid %d) exited with %d", child.worker_id, child.pid, code)
        if self._on_news is not None:
            self._on_news(News(worker_id=child.worker_id, verdict=Verdict.ENDED,
                               reason=f"its agent exited with code {code}", exit_code=code))

    # --- stopping ------------------------------------------------------------------------
    async def _stop_child(self, child: _Child) -> None:
        # Until it is reaped the pid (and its process group id) cannot be reused.
        if child.exited.done():
            return
        self._signal_child(child, signal.SIGTERM)
        if await self._exited_within(child):
            return
        log.warning("worker %s: agent (pid %d) ignored SIGTERM for %gs; killing it",
                    child.worker_id, child.pid, self._grace_s)
        self._signal_child(child, signal.SIGKILL)
        if not await self._exited_within(child):
            raise ProviderError(f"agent pid {child.pid} did not die after SIGKILL")

    @staticmethod
    def _signal_child(child: _Child, sig: signal.Signals) -> None:
        if child.template is not None:
            child.template.signal(child.pid, sig)  # race-free: it signals only its unreaped
        else:
            _signal(child.pid, sig)

    async def _exited_within(self, child: _Child) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(child.exited), self._grace_s)
        except TimeoutError:
            return False
        return True

    async def _stop_stranger(self, pid: int, worker_id: UUID) -> None:
        """Stop an agent of this worker that is not our child (spawned by an earlier run)."""
        _signal(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace_s
        while loop.time() < deadline:
            if not self._is_agent_of(pid, worker_id):
                return
            await asyncio.sleep(_POLL_S)
        if self._is_agent_of(pid, worker_id):
            log.warning("worker %s: agent (pid %d) ignored SIGTERM; killing it", worker_id, pid)
            _signal(pid, signal.SIGKILL)


def _wait_blocking(loop: asyncio.AbstractEventLoop, child: _Child,
                   on_exit: Callable[[_Child, int], None]) -> None:
    try:
        _, status = os.waitpid(child.pid, 0)
    except ChildProcessError:
        status = -1
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(on_exit, child, _exit_code(status))


def _exit_code(status: int) -> int:
    return -1 if status < 0 else os.waitstatus_to_exitcode(status)


def _parse_pid(resource_id: str) -> int | None:
    try:
        pid = int(resource_id)
    except ValueError:
        return None
    return pid if pid > 1 else None


def _signal(pid: int, sig: signal.Signals) -> None:
    """Signal the process group ``pid`` leads (the agent and what it started), else the pid."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:  # already gone
        pass
    except PermissionError as e:
        raise ProviderError(f"not allowed to signal pid {pid}") from e


def _proc_mentions(pid: int, worker_id: UUID) -> bool:
    """Whether a live process ``pid`` is this worker's agent, by its environment or argv."""
    proc = Path("/proc") / str(pid)
    try:
        environ = (proc / "environ").read_bytes()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:  # gone, a zombie, another user's, or no /proc here
        return False
    wanted = str(worker_id).encode()
    return b"HODEI_WORKER_ID=" + wanted in environ.split(b"\0") or wanted in cmdline


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat`` field 22):
    with the pid, it names one process, never a later one given the same pid."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])
