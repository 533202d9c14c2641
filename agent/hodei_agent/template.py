"""An agent imported once and forked per worker (``python -m hodei_agent.template``).

Starting a Python agent costs about 0.2 s of CPU before it does anything, nearly all of it
imports. The local provider instead starts this process once: it imports everything the
agent needs, then waits on its stdin (a Unix socket to the provider) for one JSON object per
line:

- ``{"spawn": N, "env": {...}, "log": PATH}``: fork an agent with exactly that environment,
  in a session of its own, stdin ``/dev/null``, stdout and stderr appended to ``PATH``;
  answered ``{"spawned": N, "pid": P}`` (or ``{"spawned": N, "error": "..."}``);
- ``{"signal": P, "sig": S}``: signal the process group of agent ``P``, only while ``P`` is a
  child not yet reaped here (so never a process that took over a freed pid);

and it tells, unasked, ``{"ready": true}`` once imported and ``{"exited": P, "code": C}`` as it
reaps each agent. At end of input its agents are left running (like agents the provider
spawns itself, they outlive a stopping service), and the template stays with them until the
last has ended, still their guard:

The template is a child subreaper (Linux): whatever an agent's death orphans is given to it,
not to PID 1. When an agent ends, the template kills every process it was given that belongs
to no live agent's job (its session's leader is not a live agent's child), each with its
process group: the running job of an agent killed -9, whole, and anything that left its
job's session. So a forked agent starts its jobs' shells directly, without the
parent-death signal that a spawned agent has ``setpriv`` set (an exec less per job).

A forked agent is the agent of ``python -m hodei_agent`` from its ``main()`` on: its settings
come from the environment it is given, and nothing of the template's stays open in it. Only
``/proc/<pid>/environ`` differs: it shows the template's environment (the provider records
the agent's pid and start time instead, to know it again).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
from typing import Any

# As in ``hodei_agent.__main__``: nats-py would import aiohttp for websockets.
sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]

import msgspec  # noqa: E402

from hodei_agent import entry, process  # noqa: E402
from hodei_common import eventloop, heap  # noqa: E402

# The loop the agents will run on, imported here once too.
eventloop.loop_factory()

_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class Template:
    """The loop: requests from the provider, agents reaped."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._children: set[int] = set()
        self._buffer = b""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._open = True  # the provider's channel
        self._guard = False  # a child subreaper: its agents' jobs are in its care

    def run(self) -> int:
        self._guard = process.become_subreaper()
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector through the fd
        self._selector.register(self._channel, selectors.EVENT_READ, "channel")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        heap.settle()  # what every agent forked from here shares, kept out of its collector
        self._send({"ready": True})
        while True:
            for key, _ in self._selector.select():
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 512)
                    self._reap()
                elif self._open and not self._read():
                    self._close()  # the provider is gone; its agents run on
                if not self._open and not self._children:
                    return 0

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._selector.unregister(self._channel)
            self._channel.close()

    def _read(self) -> bool:
        try:
            data = self._channel.recv(65536)
        except OSError:
            return False
        if not data:
            return False
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._handle(msgspec.json.decode(line))
        return True

    def _handle(self, request: dict[str, Any]) -> None:
        if "spawn" in request:
            try:
                pid = self._fork(request["env"], request["log"])
            except OSError as e:
                self._send({"spawned": request["spawn"], "error": e.strerror or str(e)})
            else:
                self._send({"spawned": request["spawn"], "pid": pid})
        elif "signal" in request:
            pid = request["signal"]
            if pid in self._children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, request["sig"])

    def _fork(self, env: dict[str, str], log_path: str) -> int:
        log_fd = os.open(log_path, _LOG_FLAGS, 0o600)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the agent's side, measured by its own tests
                self._become_agent(env, log_fd)
            self._children.add(pid)
            return pid
        finally:
            os.close(log_fd)

    def _become_agent(self, env: dict[str, str], log_fd: int) -> None:
        code = 1
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self._selector.close()
            self._channel.close()  # closed already when the provider went
            os.close(self._wake_r)
            os.close(self._wake_w)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(log_fd)
            os.environ.clear()
            os.environ.update(env)
            if self._guard:
                process.guarded_by_parent()
            code = _run_agent()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _reap(self) -> None:
        """Reap every child that ended: agents (told) and processes given to the template
        (silently); then, if an agent ended, end what it left behind."""
        agent_ended = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                break
            if pid == 0:
                break
            if pid in self._children:
                self._children.discard(pid)
                agent_ended = True
                self._send({"exited": pid, "code": os.waitstatus_to_exitcode(status)})
        if agent_ended and self._guard:
            self._end_orphans()

    def _end_orphans(self) -> None:
        """SIGKILL each process given to the template that belongs to no live agent's job,
        with its process group. A job's processes are in the session of its shell, whose
        parent is the agent while it lives."""
        own_group = os.getpgrp()
        for pid in _children_of(os.getpid()):
            if pid in self._children:
                continue
            ids = process.proc_stat(pid)
            if ids is None:
                continue
            _, _, group, session = ids
            leader = process.proc_stat(session) if session != pid else None
            if leader is not None and leader[1] in self._children:
                continue  # its job runs on: that job's agent ends it
            targets = [pid] if group == own_group else [-group, pid]
            for target in targets:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(target, signal.SIGKILL)

    def _send(self, message: dict[str, Any]) -> None:
        if not self._open:
            return
        try:
            self._channel.sendall(msgspec.json.encode(message) + b"\n")
        except OSError:  # the provider is gone
            self._close()


def _children_of(parent: int) -> list[int]:
    """The children of ``parent`` (this process): from its tasks' ``children`` files, or,
    where the kernel has none, from every process's parent."""
    tasks = process.PROC / str(parent) / "task"
    try:
        return [int(pid) for task in os.listdir(tasks)
                for pid in (tasks / task / "children").read_bytes().split()]
    except OSError:
        pass
    return [int(name) for name in os.listdir(process.PROC)
            if name.isdigit() and (ids := process.proc_stat(int(name))) is not None
            and ids[1] == parent]


def _run_agent() -> int:
    try:
        entry.main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # reported as the agent's own crash would be
        import traceback

        traceback.print_exc()
        return 1
    return 0


def main() -> None:
    channel = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    raise SystemExit(Template(channel).run())


if __name__ == "__main__":
    main()
