"""The local provider's side of ``hodei_agent.template``: agents forked from one that has
already imported everything (see that module for the protocol).

A spawned Python agent spends about 0.2 s of CPU on imports before it registers; a forked
one starts at its ``main()``. The template is the provider's child; its agents are the
template's, so the template reaps them and tells their exit codes, and signals them on the
provider's behalf (only while unreaped: a freed pid is never signalled). It also guards
their jobs (an agent killed -9 takes its job with it), so a closed template whose agents
still run stays until the last has ended: it is then left to end on its own, and reaped
whenever it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec

from hodei_provisioner.providers.base import ProviderError
from hodei_provisioner.providers.spawning import spawn_in_session

log = logging.getLogger(__name__)

TEMPLATE_MODULE = "hodei_agent.template"
READY_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0


def template_command(agent_command: Sequence[str]) -> list[str] | None:
    """The template's command for an agent command ``<python> -m hodei_agent``; None for any
    other command (it is spawned as it is, per worker)."""
    if len(agent_command) == 3 and list(agent_command[1:]) == ["-m", "hodei_agent"]:
        return [agent_command[0], "-m", TEMPLATE_MODULE]
    return None


class TemplateGone(ProviderError):
    """The template exited, or never became ready."""


class AgentTemplate:
    """One running template process and the requests in flight to it."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        on_spawned: Callable[[int, UUID], None],
        on_exited: Callable[[int, int], None],
        on_gone: Callable[[], None],
    ) -> None:
        self._command = list(command)
        self._env = dict(env)
        self._log_path = log_path
        self._on_spawned = on_spawned
        self._on_exited = on_exited
        self._on_gone = on_gone
        self._pid: int | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._pending: dict[int, tuple[asyncio.Future[int], UUID]] = {}
        self._agents: set[int] = set()  # forked, not yet told exited
        self._next = 0
        self.gone = False

    async def start(self) -> None:
        """Spawn the template and wait until it has imported the agent."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            self._pid = spawn_in_session(self._command, self._env, self._log_path,
                                         stdin=theirs.fileno())
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self._ready = loop.create_future()
        self._reading = asyncio.create_task(self._read(reader), name="agent-template")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT_S)
        except BaseException:
            await self.close()
            raise

    @property
    def pid(self) -> int | None:
        return self._pid

    async def spawn(self, env: Mapping[str, str], log_path: Path, worker_id: UUID) -> int:
        """Fork an agent with ``env``, its output to ``log_path``; its pid."""
        if self.gone or self._writer is None:
            raise TemplateGone("the agent template is not running")
        self._next += 1
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = (future, worker_id)
        self._send({"spawn": self._next, "env": dict(env), "log": str(log_path)})
        return await future

    def signal(self, pid: int, sig: int) -> None:
        """Signal agent ``pid``'s process group, should it not be reaped yet."""
        if not self.gone:
            self._send({"signal": pid, "sig": int(sig)})

    async def close(self) -> None:
        """Close the template (its agents run on) and collect it, once it has ended: at once
        without agents, else when the last of them has."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._reading is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reading), CLOSE_TIMEOUT_S)
            self._reading.cancel()
        await self._collect()

    def _send(self, message: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.write(msgspec.json.encode(message) + b"\n")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                self._handle(msgspec.json.decode(line))
        except (OSError, msgspec.DecodeError) as e:
            log.warning("agent template (pid %s): %s", self._pid, e)
        finally:
            self._end()
            if self._writer is not None:
                self._writer.close()
            await self._collect()

    def _handle(self, message: dict[str, Any]) -> None:
        if "exited" in message:
            self._agents.discard(message["exited"])
            self._on_exited(message["exited"], message["code"])
        elif "spawned" in message:
            future, worker_id = self._pending.pop(message["spawned"])
            if "pid" in message:
                self._agents.add(message["pid"])
                self._on_spawned(message["pid"], worker_id)
                future.set_result(message["pid"])
            else:
                future.set_exception(OSError(message.get("error", "cannot fork")))
        elif message.get("ready") and self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _end(self) -> None:
        if self.gone:
            return
        self.gone = True
        error = TemplateGone(f"the agent template (pid {self._pid}) exited")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._on_gone()

    async def _collect(self) -> None:
        if self._pid is None:
            return
        pid, self._pid = self._pid, None
        if self._agents:  # it guards them until the last has ended: reaped then
            threading.Thread(target=_wait, args=(pid,), name=f"agent-template-{pid}",
                             daemon=True).start()
            return
        waiting = asyncio.ensure_future(asyncio.to_thread(_wait, pid))
        try:
            await asyncio.wait_for(asyncio.shield(waiting), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("agent template (pid %d) did not end; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await waiting


def _wait(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
