"""Helpers shared by the embedded servers: free ports, starting, waiting, stopping a child."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hodei_common.errors import HodeiError

_SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None


class EmbeddedServerError(HodeiError):
    """An embedded server could not start; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 8) -> str:
    """The last lines of a log file, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    *,
    what: str,
    log_file: Path,
    timeout_s: float = 30.0,
) -> None:
    """Poll ``ready`` until true; fail with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(
                f"{what} exited with code {proc.returncode}:\n{tail(log_file)}"
            )
        if ready():
            return
        time.sleep(0.02)
    stop_process(proc, signal.SIGKILL)
    raise EmbeddedServerError(f"{what} did not start within {timeout_s:g}s:\n{tail(log_file)}")


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 15.0
) -> None:
    """Send ``sig``, wait, and kill if the process is still there after ``timeout_s``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ChildServer:
    """A server run as our child process: start, stop, kill and liveness shared by both servers.

    The server runs in a session of its own, so a signal sent to our process group (Ctrl-C in
    a terminal, a supervisor signalling the group) does not reach it: it outlives the drain
    of the services that use it, and whoever started it stops it last. With
    ``die_with_parent`` it is also sent its ``stop_signal`` should the thread that started it
    end (``PR_SET_PDEATHSIG``, set by util-linux's ``setpriv``, which execs the server in
    place), so a parent killed -9 leaves no server behind; start it from the main thread then.
    """

    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 15.0

    def __init__(self, *, die_with_parent: bool = False) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self.die_with_parent = die_with_parent

    def _launch(self, args: list[str], **popen: Any) -> subprocess.Popen[bytes]:
        """Start ``args`` in a new session, tied to this thread when ``die_with_parent``."""
        if self.die_with_parent and _SETPRIV is not None:
            name = signal.Signals(self.stop_signal).name.removeprefix("SIG")
            args = [_SETPRIV, "--pdeathsig", name, "--", *args]
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            args, start_new_session=True, **popen)
        return proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        """Stop gracefully, killing after a timeout; a no-op when not running."""
        if self._proc is not None:
            stop_process(self._proc, self.stop_signal, self.stop_timeout_s)
            self._proc = None

    def kill(self) -> None:
        """Kill -9, as a crash would."""
        if self._proc is not None:
            stop_process(self._proc, signal.SIGKILL)
            self._proc = None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
