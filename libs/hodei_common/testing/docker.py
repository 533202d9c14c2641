"""A real Docker engine for the tests: the one running, or dockerd started for the session.

Tests marked ``docker`` use the ``docker_engine`` fixture. When no engine answers and
``dockerd`` is installed, the fixture starts it (host networking only: no bridge, no
iptables) and stops it after the session. Without an engine the tests are skipped, unless
``HODEI_REQUIRE_DOCKER=1`` (CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.errors import DockerException

REQUIRE_ENV = "HODEI_REQUIRE_DOCKER"
START_TIMEOUT_S = 60.0
PING_API_VERSION = "1.24"
DEFAULT_SOCKET = "/var/run/docker.sock"


def _unix_socket_answers() -> bool:
    """Whether the engine's unix socket (when it is one) accepts a connection. Checked here
    because the SDK leaves the socket of a failed connection unclosed."""
    host = os.environ.get("DOCKER_HOST", "unix://" + DEFAULT_SOCKET)
    if not host.startswith("unix://"):
        return True  # a TCP engine: the SDK's ping tells
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        try:
            sock.connect(host.removeprefix("unix://"))
        except OSError:
            return False
    return True


def _ping() -> bool:
    if not _unix_socket_answers():
        return False
    try:
        client = docker.from_env(timeout=5, version=PING_API_VERSION)
    except DockerException:
        return False
    try:
        return bool(client.ping())
    except DockerException:
        return False
    finally:
        client.close()


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{REQUIRE_ENV} is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    """A client of a Docker engine that answers; dockerd is started when it is installed
    and none runs."""
    started: subprocess.Popen[bytes] | None = None
    if not _ping():
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            _unavailable("no Docker engine answers and dockerd is not installed")
        assert dockerd is not None
        log_path = Path(tempfile.mkdtemp(prefix="hodei-dockerd-")) / "dockerd.log"
        with log_path.open("ab") as log:
            started = subprocess.Popen(
                [dockerd, "--iptables=false", "--bridge=none"], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ping():
            if started.poll() is not None or time.monotonic() > deadline:
                started.kill()
                tail = log_path.read_text(errors="replace")[-2000:]
                _unavailable(f"dockerd did not start:\n{tail}")
            time.sleep(0.1)
    client = docker.from_env()
    try:
        yield client
    finally:
        client.close()
        if started is not None:
            started.terminate()
            try:
                started.wait(timeout=30)
            except subprocess.TimeoutExpired:
                started.kill()
