"""Session fixtures shared by suites: the worker image, built once per run of the tests."""

from __future__ import annotations

import hashlib

import docker
import pytest

from hodei_cli.image import build_worker_image, source_root

TEST_IMAGE = "hodei-agent:test"


@pytest.fixture(scope="session")
def worker_image(docker_engine: docker.DockerClient) -> str:
    """The worker image of these sources (rebuilt only when they changed), as its tag: one
    tag per checkout, so that two checkouts testing on one engine do not rebuild each
    other's image in the middle of a run."""
    checkout = hashlib.sha256(str(source_root()).encode()).hexdigest()[:12]
    tag = f"{TEST_IMAGE}-{checkout}"
    build_worker_image(tag, say=lambda line: None)
    return tag
