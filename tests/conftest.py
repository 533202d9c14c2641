"""Session fixtures shared by suites: the worker image, built once per run of the tests."""

from __future__ import annotations

import hashlib
import signal

import docker
import pytest

from hodei_cli.image import build_worker_image, source_root

TEST_IMAGE = "hodei-agent:test"


def pytest_configure(config: pytest.Config) -> None:
    """Tests stop the CLI as a user does, with Ctrl-C (SIGINT). A test run started in the
    background of a script (`./scripts/test &`) begins with SIGINT ignored, and every process
    it starts would inherit that and never stop: give this process a handler instead, which
    its children start without (their SIGINT is then the default again)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def worker_image(docker_engine: docker.DockerClient) -> str:
    """The worker image of these sources (rebuilt only when they changed), as its tag: one
    tag per checkout, so that two checkouts testing on one engine do not rebuild each
    other's image in the middle of a run."""
    checkout = hashlib.sha256(str(source_root()).encode()).hexdigest()[:12]
    tag = f"{TEST_IMAGE}-{checkout}"
    build_worker_image(tag, say=lambda line: None)
    return tag
