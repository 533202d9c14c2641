"""Release: WorkerTerminating destroys the worker's agent; the worker ends TERMINATED."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from hodei_common.contracts import subjects
from hodei_common.contracts.workers import WorkerState, WorkerTerminating
from hodei_common.relay import RelayService
from hodei_common.testing import assert_eventually
from hodei_provisioner.config import ProvisionerSettings
from hodei_provisioner.providers import WorkerSpec
from hodei_provisioner.providers.local import LocalProvider
from hodei_provisioner.service import ProvisionerService
from tests.provisioner.conftest import local_provider, running
from tests.provisioner.helpers import (
    is_alive,
    published,
    request_worker,
    resource_pid,
    retire_worker,
    stream_events,
    worker,
    worker_subjects,
)

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def _state(pool: asyncpg.Pool, worker_id: UUID) -> WorkerState:
    return WorkerState((await worker(pool, worker_id))["state"])


async def _publish_terminating(js: JetStreamContext, worker_id: UUID) -> int:
    """A WorkerTerminating straight to JetStream (a redelivery after the duplicate window)."""
    event = WorkerTerminating(event_id=uuid4(), occurred_at=datetime.now(UTC), actor="test",
                              worker_id=worker_id, provider="local", reason="again")
    ack = await js.publish(subjects.WORKER_TERMINATING, msgspec.json.encode(event),
                           headers={subjects.HEADER_MSG_ID: str(event.event_id)})
    return ack.seq


async def _released(js: JetStreamContext, seq: int) -> None:
    async def acked() -> bool:
        info = await js.consumer_info(subjects.WORKER_EVENTS_STREAM,
                                      subjects.PROVISIONER_RELEASE_CONSUMER)
        return info.ack_floor.stream_seq >= seq

    await assert_eventually(acked)


async def _ready_worker(pool: asyncpg.Pool) -> tuple[UUID, int]:
    worker_id = await request_worker(pool)
    await assert_eventually(lambda: _state_is(pool, worker_id, WorkerState.READY))
    pid = await assert_eventually(lambda: resource_pid(pool, worker_id))
    return worker_id, pid


async def _state_is(pool: asyncpg.Pool, worker_id: UUID, state: WorkerState) -> bool:
    return await _state(pool, worker_id) is state


async def test_worker_terminating_destroys_the_agent_and_terminates_the_worker(
    provisioner: ProvisionerService, pool: asyncpg.Pool, js: JetStreamContext,
) -> None:
    worker_id, pid = await _ready_worker(pool)
    assert is_alive(pid)
    await retire_worker(pool, worker_id, reason="job finished")
    await assert_eventually(lambda: _state_is(pool, worker_id, WorkerState.TERMINATED))
    assert not is_alive(pid)
    assert local_provider(provisioner).children() == {}
    row = await worker(pool, worker_id)
    assert row["terminated_at"] is not None
    assert row["current_job_id"] is None
    await assert_eventually(
        lambda: published(js, worker_id, subjects.WORKER_TERMINATED))
    terminated = [p for s, p in await stream_events(js) if s == subjects.WORKER_TERMINATED]
    assert terminated[0]["reason"] == "job finished"

    # A redelivery finds the work done: nothing is killed, nothing is announced twice.
    await _released(js, await _publish_terminating(js, worker_id))
    assert await _state(pool, worker_id) is WorkerState.TERMINATED
    assert (await worker_subjects(js, worker_id)).count(subjects.WORKER_TERMINATED) == 1


async def test_releasing_a_failed_worker_destroys_its_agent_and_keeps_it_failed(
    provisioner: ProvisionerService, pool: asyncpg.Pool, js: JetStreamContext,
) -> None:
    worker_id, pid = await _ready_worker(pool)
    await pool.execute("UPDATE workers SET state = 'FAILED', error = 'lost' WHERE id = $1",
                       worker_id)
    await _released(js, await _publish_terminating(js, worker_id))
    assert not is_alive(pid)
    row = await worker(pool, worker_id)
    assert (row["state"], row["error"]) == (WorkerState.FAILED, "lost")
    assert row["terminated_at"] is not None
    assert subjects.WORKER_TERMINATED not in await worker_subjects(js, worker_id)


class _GivenUpWhileStarting(LocalProvider):
    """Creates the agent, but the worker is given up (FAILED) before the pid is recorded."""

    def __init__(self, pool: asyncpg.Pool, settings: ProvisionerSettings) -> None:
        super().__init__(settings.provisioner_agent_command, settings.workers_dir(),
                         grace_s=1.0)
        self.pool = pool
        self.pids: list[int] = []

    async def create(self, spec: WorkerSpec) -> str:
        resource_id = await super().create(spec)
        self.pids.append(int(resource_id))
        await self.pool.execute("UPDATE workers SET state = 'FAILED' WHERE id = $1",
                                spec.worker_id)
        return resource_id


async def test_an_agent_whose_worker_was_given_up_meanwhile_is_destroyed(
    provisioner_settings: ProvisionerSettings, relay: RelayService, pool: asyncpg.Pool,
    js: JetStreamContext,
) -> None:
    provider = _GivenUpWhileStarting(pool, provisioner_settings)
    async with running(ProvisionerService(provisioner_settings, providers=[provider])):
        worker_id = await request_worker(pool)
        await assert_eventually(lambda: provider.pids and provider.children() == {})
        assert not is_alive(provider.pids[0])
        row = await worker(pool, worker_id)
        assert (row["state"], row["provider_resource_id"]) == (WorkerState.FAILED, None)
    assert subjects.WORKER_CREATED not in await worker_subjects(js, worker_id)
