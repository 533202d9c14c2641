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
reaps each agent. End of input ends the template; its agents are left running (like agents
the provider spawns itself, they outlive a stopping service).

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

from hodei_agent import entry  # noqa: E402

_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class Template:
    """The loop: requests from the provider, agents reaped."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._children: set[int] = set()
        self._buffer = b""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()

    def run(self) -> int:
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector through the fd
        self._selector.register(self._channel, selectors.EVENT_READ, "channel")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._send({"ready": True})
        while True:
            for key, _ in self._selector.select():
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 512)
                    self._reap()
                elif not self._read():
                    return 0  # the provider is gone: so is the template, not its agents

    def _read(self) -> bool:
        data = self._channel.recv(65536)
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
            self._channel.close()
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
            code = _run_agent()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                return
            if pid == 0:
                return
            self._children.discard(pid)
            self._send({"exited": pid, "code": os.waitstatus_to_exitcode(status)})

    def _send(self, message: dict[str, Any]) -> None:
        self._channel.sendall(msgspec.json.encode(message) + b"\n")


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
