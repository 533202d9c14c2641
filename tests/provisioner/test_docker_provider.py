"""The provisioner with the Docker provider on a real engine, the real agent in containers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import asyncpg
import docker
import pytest
from docker.errors import NotFound
from docker.models.containers import Container

from hodei_common.contracts.workers import WorkerMode, WorkerState
from hodei_common.testing import assert_eventually
from hodei_provisioner.providers.docker import (
    LABEL_MANAGED,
    LABEL_PROVIDER_ID,
    LABEL_WORKER,
    DockerProvider,
)
from hodei_provisioner.service import ProvisionerService
from tests.provisioner.helpers import request_worker, retire_worker, worker

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.docker]


@pytest.fixture
async def docker_provider(
    pool: asyncpg.Pool, worker_image: str, provisioner: ProvisionerService,
    docker_engine: docker.DockerClient,
) -> AsyncIterator[DockerProvider]:
    """The provisioner's Docker provider, enabled with the test image and small limits;
    every container of this test's provider row is removed afterwards."""
    await pool.execute(
        "UPDATE provider_configs SET enabled = true, image = $1, "
        "settings = settings || '{\"cpus\": 0.5, \"memory_bytes\": 134217728}' "
        "WHERE name = 'docker'", worker_image)
    provider = provisioner.providers["docker"]
    assert isinstance(provider, DockerProvider)
    try:
        yield provider
    finally:
        for container_id in await _containers(docker_engine, await _scope(pool)):
            with contextlib.suppress(NotFound):
                docker_engine.api.remove_container(container_id, force=True)


async def _scope(pool: asyncpg.Pool) -> str:
    return str(await pool.fetchval("SELECT id FROM provider_configs WHERE name = 'docker'"))


async def _containers(client: docker.DockerClient, scope: str) -> list[str]:
    """Ids of the provider row's containers, as the engine lists them (no inspection, which
    would race their removal)."""
    return [c["Id"] for c in client.api.containers(all=True, filters={
        "label": [f"{LABEL_MANAGED}=true", f"{LABEL_PROVIDER_ID}={scope}"]})]


async def _state(pool: asyncpg.Pool, worker_id: UUID) -> WorkerState:
    return WorkerState((await worker(pool, worker_id))["state"])


async def _resource(pool: asyncpg.Pool, worker_id: UUID) -> str:
    return str((await worker(pool, worker_id))["provider_resource_id"] or "")


async def _status(pool: asyncpg.Pool, worker_id: UUID) -> str | None:
    status: str | None = (await worker(pool, worker_id))["resource_status"]
    return status


async def _ready_worker(pool: asyncpg.Pool) -> tuple[UUID, str]:
    worker_id = await request_worker(pool, provider="docker", mode=WorkerMode.EPHEMERAL)
    await assert_eventually(lambda: _is(_state(pool, worker_id), WorkerState.READY),
                            within_s=20)
    return worker_id, await _resource(pool, worker_id)


async def _is(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


async def test_a_docker_worker_is_a_labelled_limited_container_whose_agent_registers(
    docker_provider: DockerProvider, pool: asyncpg.Pool, docker_engine: docker.DockerClient,
) -> None:
    worker_id, container_id = await _ready_worker(pool)
    await assert_eventually(lambda: _is(_status(pool, worker_id),
                                        f"container {container_id[:12]} started"))
    container = docker_engine.containers.get(container_id)
    assert container.labels[LABEL_MANAGED] == "true"
    assert container.labels[LABEL_WORKER] == str(worker_id)
    assert container.labels[LABEL_PROVIDER_ID] == await _scope(pool)
    host = container.attrs["HostConfig"]
    assert (host["Memory"], host["MemorySwap"], host["NanoCpus"]) == (2**27, 2**27, 5 * 10**8)
    assert host["NetworkMode"] == "host"
    # The agent: root with only what it needs to run its job as the image's job user.
    assert container.attrs["Config"]["User"] == "0:0"
    assert "HODEI_AGENT_JOB_USER=10001:10001" in container.attrs["Config"]["Env"]
    assert (host["CapDrop"], sorted(host["CapAdd"]), host["SecurityOpt"]) == (
        ["ALL"], ["CHOWN", "DAC_OVERRIDE", "KILL", "SETGID", "SETUID"], ["no-new-privileges"])
    assert await docker_provider.exists(container_id, worker_id=worker_id)
    assert not await docker_provider.exists(container_id, worker_id=uuid4())

    await retire_worker(pool, worker_id)
    await assert_eventually(lambda: _is(_state(pool, worker_id), WorkerState.TERMINATED))
    assert await _containers(docker_engine, await _scope(pool)) == []


async def test_the_providers_network_mode_setting_is_the_containers(
    docker_provider: DockerProvider, pool: asyncpg.Pool, docker_engine: docker.DockerClient,
) -> None:
    await pool.execute("""UPDATE provider_configs
                          SET settings = settings || '{"network_mode": "none"}'
                          WHERE name = 'docker'""")
    worker_id = await request_worker(pool, provider="docker", mode=WorkerMode.EPHEMERAL)
    container_id = await assert_eventually(lambda: _resource(pool, worker_id), within_s=20)
    host = docker_engine.containers.get(container_id).attrs["HostConfig"]
    assert host["NetworkMode"] == "none"


async def test_destroying_a_container_already_removed_succeeds(
    docker_provider: DockerProvider, pool: asyncpg.Pool, docker_engine: docker.DockerClient,
) -> None:
    worker_id, container_id = await _ready_worker(pool)
    docker_engine.containers.get(container_id).remove(force=True)
    await docker_provider.destroy(container_id, worker_id=worker_id)
    await docker_provider.destroy(container_id, worker_id=worker_id)
    await docker_provider.destroy("0" * 64, worker_id=worker_id)


async def test_a_container_of_another_worker_is_not_destroyed(
    docker_provider: DockerProvider, pool: asyncpg.Pool, docker_engine: docker.DockerClient,
) -> None:
    _, container_id = await _ready_worker(pool)
    await docker_provider.destroy(container_id, worker_id=uuid4())
    assert docker_engine.containers.get(container_id).status == "running"


async def test_reconciliation_removes_a_labelled_container_nobody_owns_and_no_other(
    docker_provider: DockerProvider, pool: asyncpg.Pool, docker_engine: docker.DockerClient,
    worker_image: str,
) -> None:
    scope = await _scope(pool)

    def by_hand(labels: dict[str, str]) -> Container:
        return docker_engine.containers.run(worker_image, entrypoint=["sleep", "300"],
                                            labels=labels, network_mode="none", detach=True)

    orphan = by_hand({LABEL_MANAGED: "true", LABEL_WORKER: str(uuid4()),
                      LABEL_PROVIDER_ID: scope})
    unlabelled = by_hand({})
    other_platform = by_hand({LABEL_MANAGED: "true", LABEL_WORKER: str(uuid4()),
                              LABEL_PROVIDER_ID: str(uuid4())})
    try:
        async def orphan_gone() -> bool:
            return orphan.id not in await _containers(docker_engine, scope)

        await assert_eventually(orphan_gone, within_s=15)
        for survivor in (unlabelled, other_platform):
            survivor.reload()
            assert survivor.status == "running"
    finally:
        for container in (unlabelled, other_platform):
            container.remove(force=True)


async def test_a_busy_worker_whose_container_vanished_is_failed_and_its_job_requeued(
    docker_provider: DockerProvider, pool: asyncpg.Pool, docker_engine: docker.DockerClient,
) -> None:
    worker_id, container_id = await _ready_worker(pool)
    job_id = uuid4()
    await pool.execute(
        "INSERT INTO jobs (id, command, timeout_s, provider, state, worker_id, assigned_at) "
        "VALUES ($1, 'sleep 100', 60, 'docker', 'RUNNING', $2, now())", job_id, worker_id)
    await pool.execute("UPDATE workers SET state = 'BUSY', current_job_id = $2 WHERE id = $1",
                       worker_id, job_id)
    docker_engine.containers.get(container_id).remove(force=True)

    await assert_eventually(lambda: _is(_state(pool, worker_id), WorkerState.FAILED),
                            within_s=15)
    row = await worker(pool, worker_id)
    assert row["error"] == "its container is gone"
    job = await pool.fetchrow("SELECT state, attempt, worker_id, error, not_before > now() - "
                              "interval '1 minute' AS backoff FROM jobs WHERE id = $1", job_id)
    assert job is not None
    assert (job["state"], job["attempt"], job["worker_id"], job["error"], job["backoff"]) == (
        "QUEUED", 2, None, "worker lost: its container is gone", True)
    events = await pool.fetch("SELECT event_type FROM domain_events WHERE aggregate_id = ANY($1) "
                              "ORDER BY seq", [worker_id, job_id])
    assert [e["event_type"] for e in events][-2:] == ["WorkerFailed", "JobRequeued"]
