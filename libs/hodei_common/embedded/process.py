"""Helpers shared by the embedded servers: free ports, waiting, stopping a child."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from hodei_common.errors import HodeiError


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
    """A server run as our child process: stop, kill and liveness shared by both servers."""

    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 15.0

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

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
