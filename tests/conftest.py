"""Session fixtures shared by suites: the worker image, built once per run of the tests."""

from __future__ import annotations

import docker
import pytest

from hodei_cli.image import build_worker_image

TEST_IMAGE = "hodei-agent:test"


@pytest.fixture(scope="session")
def worker_image(docker_engine: docker.DockerClient) -> str:
    """The worker image of these sources (rebuilt only when they changed), as its tag."""
    build_worker_image(TEST_IMAGE, say=lambda line: None)
    return TEST_IMAGE
