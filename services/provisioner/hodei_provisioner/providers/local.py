"""The local-process provider: each worker is an agent process on this machine.

The agent is spawned in a session (and so a process group) of its own, with a minimal
environment: the service's database URL and other secrets never reach it. Its stdout and
stderr are appended to ``<workers dir>/<worker id>.log``. The resource id is the pid.

A pid can be reused once its process is gone, so nothing is killed unless it is provably the
worker's agent: a child this provider spawned for that worker and has not yet reaped, or a
process whose ``/proc/<pid>/environ`` or command line names the worker id (an agent spawned
by an earlier run of the service).
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
from hodei_provisioner.providers.base import News, Provider, ProviderError, Verdict, WorkerSpec

log = logging.getLogger(__name__)

# Variables of the service's own environment an agent gets; everything else is left behind.
INHERITED_ENV = ("PATH", "HOME", "LANG", "HODEI_LOG_LEVEL", "HODEI_LOG_FORMAT",
                 *AGENT_ENV)
_POLL_S = 0.05


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` an agent may see."""
    return {key: environ[key] for key in INHERITED_ENV if key in environ}


@dataclass(eq=False)
class _Child:
    """An agent this provider spawned; ``exited`` resolves (to the exit code) once reaped."""

    pid: int
    worker_id: UUID
    exited: asyncio.Future[int]


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
        try:
            pid = _spawn(self._command, env, self.log_path(spec.worker_id))
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
        elif _proc_mentions(pid, worker_id):
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
        return _proc_mentions(pid, worker_id)

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
        _signal(child.pid, signal.SIGTERM)
        if await self._exited_within(child):
            return
        log.warning("worker %s: agent (pid %d) ignored SIGTERM for %gs; killing it",
                    child.worker_id, child.pid, self._grace_s)
        _signal(child.pid, signal.SIGKILL)
        if not await self._exited_within(child):
            raise ProviderError(f"agent pid {child.pid} did not die after SIGKILL")

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
            if not _proc_mentions(pid, worker_id):
                return
            await asyncio.sleep(_POLL_S)
        if _proc_mentions(pid, worker_id):
            log.warning("worker %s: agent (pid %d) ignored SIGTERM; killing it", worker_id, pid)
            _signal(pid, signal.SIGKILL)


def _spawn(command: Sequence[str], env: Mapping[str, str], log_path: Path) -> int:
    """Start ``command`` in a new session, stdin from /dev/null, output appended to the log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        # posix_spawn, not asyncio's subprocess transport: a transport kills its child when it
        # is closed or collected, and agents must outlive a stopping service.
        return os.posix_spawnp(
            command[0], list(command), dict(env),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(fd)


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
