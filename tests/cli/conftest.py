"""The platform's services running in the test's loop, and the real `hodei` binary to drive them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import sys
import termios
import tty
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hodei_cli.services import SERVICES
from hodei_common.runner import HodeiService
from hodei_common.settings import Settings
from hodei_common.testing.services import running

HODEI = str(Path(sys.executable).with_name("hodei"))


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
async def platform(settings: Settings) -> AsyncIterator[list[HodeiService]]:
    """The intake side of the platform (api and relay): jobs are accepted and stay QUEUED,
    so the CLI's view of them holds still while a test looks."""
    services = [SERVICES[name](settings) for name in ("api", "relay")]
    async with running(services):
        yield services


@pytest.fixture
def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env["HODEI_NATS_URL"] = settings.resolved_nats_url()
    env["HODEI_DATABASE_URL"] = settings.resolved_database_url()
    env["HODEI_HOME"] = str(settings.home)
    if settings.creds_dir is not None:  # every identity's NATS credentials
        env["HODEI_CREDS_DIR"] = str(settings.creds_dir)
    return env


async def run_cli(env: dict[str, str], *args: str, timeout_s: float = 60.0) -> CliResult:
    """Run the real `hodei` command without blocking the services in this loop."""
    proc = await asyncio.create_subprocess_exec(
        HODEI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


# A status line drawn: carriage return, its text, clear to the end of the line.
_DRAWN = re.compile(rb"\r([^\r\x1b]+)\x1b\[K")


@dataclass
class Terminal:
    """A `hodei` command whose stderr is a pseudo-terminal (stdout a pipe), and what it wrote
    on the terminal so far."""

    proc: asyncio.subprocess.Process
    master: int
    seen: bytearray = field(default_factory=bytearray)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def drawn(self) -> list[str]:
        """Every status line drawn so far, as its text."""
        return [m.group(1).decode() for m in _DRAWN.finditer(self.seen)]

    def after_last_line(self) -> bytes:
        """What was written on the terminal after the last status line drawn."""
        ends = [m.end() for m in _DRAWN.finditer(self.seen)]
        assert ends, f"no status line was drawn: {bytes(self.seen)!r}"
        return bytes(self.seen[ends[-1]:])

    async def shows(self, text: str) -> bool:
        """Whether a status line drawn so far says ``text``."""
        return any(text in line for line in self.drawn())

    async def finish(self, timeout_s: float = 30.0) -> tuple[int, bytes]:
        """Its exit code and stdout, once it exited and its terminal was read to the end."""
        out, _ = await asyncio.wait_for(self.proc.communicate(), timeout_s)
        await asyncio.wait_for(self.closed.wait(), timeout_s)
        assert self.proc.returncode is not None
        return self.proc.returncode, out


@contextlib.asynccontextmanager
async def on_terminal(env: dict[str, str], *args: str, columns: int = 250
                      ) -> AsyncIterator[Terminal]:
    """Run the real `hodei` with a pseudo-terminal of ``columns`` as its stderr."""
    master, slave = pty.openpty()
    tty.setraw(slave)  # bytes as written: no \n -> \r\n
    termios.tcsetwinsize(slave, (24, columns))
    try:
        proc = await asyncio.create_subprocess_exec(
            HODEI, *args, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    term = Terminal(proc, master)
    loop = asyncio.get_running_loop()

    def read() -> None:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal is gone
            data = b""
        term.seen += data
        if not data:
            loop.remove_reader(master)
            term.closed.set()

    loop.add_reader(master, read)
    try:
        yield term
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        loop.remove_reader(master)
        os.close(master)
