"""A job's process: its command line, its clean environment, its process group, its end."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hodei_agent.jobuser import JobUser

SHELL = "/bin/sh"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Taken from the agent's environment when set; nothing else of it reaches a job (above all
# no HODEI_* variable: not HODEI_BOOTSTRAP_TOKEN, HODEI_NATS_URL or the NATS credentials).
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME")
GONE_POLL_S = 0.02
KILL_WAIT_S = 2.0
PROC = Path("/proc")
READ_LIMIT = 64 * 1024  # asyncio's pipe buffer before it pauses reading (back-pressure)
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None
# Set in an agent whose parent ends its jobs should it die (see ``guarded_by_parent``).
_guarded = False


def command_line(command: str, args: list[str]) -> str:
    """The shell text to run: the command, then each argument quoted as one shell word."""
    return f"{command} {shlex.join(args)}" if args else command


def job_environment(
    job_env: Mapping[str, str], workdir: Path, agent_env: Mapping[str, str] | None = None,
    user: JobUser | None = None,
) -> dict[str, str]:
    """A clean base environment (never the agent's own variables) merged with the job's.

    A job user's HOME, USER and LOGNAME are its own (from its passwd entry), not the agent's.
    """
    source = os.environ if agent_env is None else agent_env
    env = {key: source[key] for key in INHERITED if source.get(key)}
    if user is not None:
        for key in ("HOME", "USER", "LOGNAME"):
            env.pop(key, None)
        env.update(user.account())
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", str(workdir))
    env.setdefault("LANG", "C.UTF-8")
    env["PWD"] = str(workdir)
    env.update(job_env)
    return env


@dataclass(frozen=True)
class JobProcess:
    """A running job: its shell (the group leader), its output, and when that shell exited
    (which the pipes may outlast: a straggler that holds them, ``sleep 100 &``, would put
    off their end until it ends by itself)."""

    popen: subprocess.Popen[bytes]
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    exited: asyncio.Future[None]

    @property
    def pgid(self) -> int:
        return self.popen.pid  # the leader of a new session: its pid is the group's id

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode


def _die_with_the_agent() -> None:
    """In the job's shell before exec: be killed when the agent dies (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def become_subreaper() -> bool:
    """Make this process the one its descendants' orphans are given to (Linux), instead of
    PID 1; False where that cannot be had."""
    return _LIBC is not None and _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def guarded_by_parent() -> None:
    """Say that this agent's parent ends its jobs should the agent die: the agent template
    does, as a child subreaper that inherits their processes. Job shells are then started
    without ``setpriv``, an exec (about 1 ms of CPU) less per job."""
    global _guarded
    _guarded = True


def _argv(cmdline: str, user: JobUser | None) -> list[str]:
    """The shell running ``cmdline``, set to be killed when the agent dies, so an agent
    killed -9 does not leave its job running with nobody to report it. ``setpriv`` (from
    util-linux, on every Debian) sets that and execs the shell in place (same pid); a
    ``preexec_fn`` would do it too, but forces a fork of the whole agent (~6 ms a job).
    With a job user, setpriv also switches to it (real and effective ids, no supplementary
    groups) before the exec; the parent-death signal survives the switch. Without a job
    user, an agent guarded by its parent (``guarded_by_parent``) needs neither."""
    if _SETPRIV is None or (_guarded and user is None):
        if user is not None:
            raise OSError("setpriv (util-linux) is needed to start a job as another user")
        return [SHELL, "-c", cmdline]
    switch = [] if user is None else [
        f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
    return [_SETPRIV, *switch, "--pdeathsig", "KILL", "--", SHELL, "-c", cmdline]


async def spawn(cmdline: str, env: Mapping[str, str], cwd: Path,
                user: JobUser | None = None) -> JobProcess:
    """Start ``sh -c cmdline`` as the leader of a new session (so of its own process group),
    as ``user`` when one is given."""
    loop = asyncio.get_running_loop()
    popen = _start(_argv(cmdline, user), env, cwd)
    try:
        assert popen.stdout is not None
        assert popen.stderr is not None
        stdout = await _reader(loop, popen.stdout)
        stderr = await _reader(loop, popen.stderr)
        exited = _exit_of(loop, popen)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        raise
    return JobProcess(popen, stdout, stderr, exited)


def _start(argv: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` by subprocess itself (vfork, then exec; the event loop's own way forks
    the whole agent on uvloop), stdin ``/dev/null``, stdout and stderr pipes. The loop then
    only reads the pipes and learns of the exit."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
        preexec_fn=(_die_with_the_agent if _SETPRIV is None and not _guarded
                    and _LIBC is not None else None),
    )


async def _reader(loop: asyncio.AbstractEventLoop, pipe: IO[bytes]) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=READ_LIMIT, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return reader


def _exit_of(loop: asyncio.AbstractEventLoop,
             popen: subprocess.Popen[bytes]) -> asyncio.Future[None]:
    """A future set once ``popen`` exited and was reaped: from a pidfd the loop watches, else
    (no pidfd here) from a thread that waits for it."""
    exited: asyncio.Future[None] = loop.create_future()
    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):  # not Linux, a kernel before 5.3, a sandbox
        waiting = loop.run_in_executor(None, popen.wait)
        waiting.add_done_callback(lambda _: _set(exited))
        return exited

    def readable() -> None:
        if popen.poll() is None:  # readable only once it exited: never, in practice
            return
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _set(exited)

    loop.add_reader(pidfd, readable)
    return exited


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but changed user (a setuid program)
        return True
    return True


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """A process's state letter, parent, process group and session (``/proc/<pid>/stat``);
    None once it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3])


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (a zombie waiting to be reaped does not)."""
    if not signal_group(pgid, 0):
        return False
    if not PROC.is_dir():
        return True
    for entry in os.scandir(PROC):
        if entry.name.isdigit() and (ids := proc_stat(int(entry.name))) is not None:
            state, _, group, _ = ids
            if group == pgid and state != "Z":
                return True
    return False


async def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait until no process of the group runs; False on time-out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while group_alive(pgid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(GONE_POLL_S)
    return True


async def kill_group(job: JobProcess, grace_s: float) -> None:
    """End the job's whole process group: SIGTERM, then SIGKILL after ``grace_s``.

    Returns once the leader is reaped and no process of the group runs (or, should one
    survive SIGKILL, after a bounded wait).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    if signal_group(job.pgid, signal.SIGTERM):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(job.exited), grace_s)
        left = max(deadline - loop.time(), 0.0)
        if job.exited.done() and await wait_group_gone(job.pgid, left):
            return
    signal_group(job.pgid, signal.SIGKILL)
    await job.exited
    await wait_group_gone(job.pgid, KILL_WAIT_S)
