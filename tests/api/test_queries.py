"""jobs.get, jobs.list, jobs.events, workers.list, providers.list."""

from __future__ import annotations

import uuid

import pytest
from asyncpg import Pool

from hodei_common.client import ApiClient
from hodei_common.contracts.api import ErrorCode
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.workers import WorkerMode, WorkerState
from hodei_common.errors import ApiError
from tests.api.helpers import job

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def test_get_returns_the_stored_job(client: ApiClient) -> None:
    submitted = (await client.submit(job("echo 1", env={"A": "b"}, priority=5))).job

    assert await client.get(submitted.id) == submitted
    assert await client.get(str(submitted.id)) == submitted


async def test_get_of_unknown_id_is_not_found(client: ApiClient) -> None:
    missing = uuid.uuid4()

    with pytest.raises(ApiError) as caught:
        await client.get(missing)

    assert (caught.value.code, caught.value.message) == (ErrorCode.NOT_FOUND,
                                                         f"job {missing} not found")


async def test_list_is_newest_first_filtered_by_state_and_limited(
    client: ApiClient, pool: Pool
) -> None:
    ids = [(await client.submit(job(f"echo {i}"))).job.id for i in range(4)]
    # Creation times against submit order, so only ORDER BY created_at can get it right.
    for age_s, job_id in enumerate(ids):
        await pool.execute("UPDATE jobs SET created_at = now() - make_interval(secs => $2) "
                           "WHERE id = $1", job_id, float(100 - age_s))
    await pool.execute("UPDATE jobs SET state = 'RUNNING' WHERE id = ANY($1::uuid[])",
                       [ids[0], ids[2]])

    everything = await client.list_jobs()
    running = await client.list_jobs(state=JobState.RUNNING)
    newest_two = await client.list_jobs(limit=2)

    assert [j.id for j in everything] == ids[::-1]
    assert [j.id for j in running] == [ids[2], ids[0]]
    assert {j.state for j in running} == {JobState.RUNNING}
    assert [j.id for j in newest_two] == [ids[3], ids[2]]


async def test_events_come_back_in_order(client: ApiClient, pool: Pool) -> None:
    submitted = (await client.submit(job())).job
    await pool.execute("UPDATE jobs SET state = 'RUNNING' WHERE id = $1", submitted.id)
    await client.cancel(submitted.id)
    other = (await client.submit(job())).job

    events = await client.events(submitted.id)

    assert [e.event_type for e in events] == ["JobCreated", "JobCancelRequested"]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert {e.aggregate_id for e in events} == {submitted.id}
    assert events[0].payload["job_id"] == str(submitted.id)
    assert [e.event_type for e in await client.events(other.id)] == ["JobCreated"]


async def test_events_of_unknown_job_is_not_found(client: ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        await client.events(uuid.uuid4())

    assert caught.value.code == ErrorCode.NOT_FOUND


async def test_workers_list_is_newest_first_and_filters_by_state(
    client: ApiClient, pool: Pool
) -> None:
    old, new, done = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await pool.executemany(
        "INSERT INTO workers (id, provider, state, created_at) "
        "VALUES ($1, 'local', $2, now() - make_interval(secs => $3))",
        [(old, "READY", 30.0), (new, "BUSY", 10.0), (done, "TERMINATED", 20.0)],
    )

    everything = await client.list_workers()
    terminated = await client.list_workers(state=WorkerState.TERMINATED)

    assert [w.id for w in everything] == [new, done, old]
    assert everything[0].last_heartbeat is None
    assert everything[0].mode is WorkerMode.EPHEMERAL
    assert [w.id for w in terminated] == [done]
    assert [w.id for w in await client.list_workers(limit=1)] == [new]


async def test_providers_list_is_every_provider_by_name(client: ApiClient) -> None:
    providers = await client.list_providers()

    assert [(p.name, p.enabled) for p in providers] == [
        ("docker", False), ("kubernetes", False), ("local", True)]
    assert providers[0].image == "hodei-agent:latest"
    assert providers[0].settings == {"cpus": 1, "memory_bytes": 512 * 2**20,
                                     "network_mode": "host"}
