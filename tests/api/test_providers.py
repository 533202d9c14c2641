"""providers.update: operators change worker mode, pool sizes and limits; bad input changes
nothing."""

from __future__ import annotations

import asyncpg
import pytest

from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.api import UpdateProvider
from hodei_common.contracts.workers import WorkerMode
from hodei_common.errors import ApiError

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def test_update_changes_only_the_given_fields_and_is_audited(
    client: ApiClient, pool: asyncpg.Pool
) -> None:
    before = {p.name: p for p in await client.list_providers()}["local"]
    updated = await client.update_provider(UpdateProvider(
        name="local", worker_mode=WorkerMode.REUSABLE, min_idle=2,
        settings={"max_jobs": 10, "idle_ttl_s": 60}))
    assert updated.worker_mode is WorkerMode.REUSABLE
    assert updated.min_idle == 2
    assert updated.settings == {"max_jobs": 10, "idle_ttl_s": 60}
    assert (updated.enabled, updated.max_workers) == (before.enabled, before.max_workers)
    cleared = await client.update_provider(UpdateProvider(name="local",
                                                          settings={"max_jobs": None}))
    assert cleared.settings == {"idle_ttl_s": 60}
    audit = await pool.fetch("SELECT event_type, payload FROM domain_events "
                             "WHERE aggregate_type = 'provider' ORDER BY seq")
    assert [a["event_type"] for a in audit] == ["ProviderUpdated", "ProviderUpdated"]
    assert audit[0]["payload"]["changes"]["worker_mode"] == "reusable"
    assert audit[1]["payload"]["changes"] == {"settings": {"max_jobs": None}}


async def test_settings_round_trip_and_keep_the_keys_sql_reads(
    client: ApiClient, pool: asyncpg.Pool
) -> None:
    docker = await client.update_provider(UpdateProvider(
        name="docker", settings={"network_mode": "bridge", "max_jobs": 4, "cpus": None}))
    assert docker.settings == {"memory_bytes": 512 * 2**20, "network_mode": "bridge",
                               "max_jobs": 4}
    assert {p.name: p.settings for p in await client.list_providers()}["docker"] == \
        docker.settings
    stored = await pool.fetchrow("SELECT settings->>'max_jobs' AS max_jobs, "
                                 "settings ? 'cpus' AS has_cpus FROM provider_configs "
                                 "WHERE name = 'docker'")
    assert (stored["max_jobs"], stored["has_cpus"]) == ("4", False)
    unchanged = await client.update_provider(UpdateProvider(name="docker", enabled=True))
    assert unchanged.settings == docker.settings


async def test_a_settings_change_drops_a_stored_key_the_kind_does_not_have(
    client: ApiClient, pool: asyncpg.Pool
) -> None:
    # What an older API let an operator store: Docker's network mode on a local provider.
    await pool.execute("""UPDATE provider_configs SET settings = '{"network_mode": "host"}'
                          WHERE name = 'local'""")
    updated = await client.update_provider(UpdateProvider(name="local",
                                                          settings={"max_jobs": 2}))
    assert updated.settings == {"max_jobs": 2}


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (UpdateProvider(name="mainframe", min_idle=1), "not_found", "unknown provider"),
        (UpdateProvider(name="local"), "invalid_argument", "nothing to change"),
        (UpdateProvider(name="local", min_idle=99), "invalid_argument",
         "min_idle cannot be larger than max_workers"),
        (UpdateProvider(name="local", settings={"colour": "blue"}), "invalid_argument",
         "provider 'local': 'colour' is not a setting of local providers (they have: cpus, "
         "idle_ttl_s, max_jobs, memory_bytes)"),
        (UpdateProvider(name="local", enabled=False, settings={"network_mode": "host"}),
         "invalid_argument", "'network_mode' is not a setting of local providers"),
        (UpdateProvider(name="local", settings={"max_jobs": "many"}), "invalid_argument",
         'provider \'local\': max_jobs must be a whole number of jobs, at least 1 '
         '(got "many")'),
        (UpdateProvider(name="local", settings={"max_jobs": -1}), "invalid_argument",
         "max_jobs must be a whole number of jobs, at least 1 (got -1)"),
        (UpdateProvider(name="local", settings={"idle_ttl_s": -5}), "invalid_argument",
         "idle_ttl_s must be a number of seconds above 0"),
        (UpdateProvider(name="docker", settings={"cpus": -1}), "invalid_argument",
         "cpus must be a number of CPUs from 0.01 to 1024 (got -1)"),
        (UpdateProvider(name="docker", settings={"memory_bytes": 1024}), "invalid_argument",
         "memory_bytes must be a whole number of bytes from 64 MiB"),
        (UpdateProvider(name="docker", settings={"network_mode": True}), "invalid_argument",
         "network_mode must be a Docker network mode"),
        (UpdateProvider(name="docker", settings={"max_jobs": 2, "network_mode": ""}),
         "invalid_argument", "network_mode must be"),
        (UpdateProvider(name="mainframe", settings={"max_jobs": 2}), "not_found",
         "unknown provider"),
    ],
)
async def test_bad_updates_are_refused_and_change_nothing(
    client: ApiClient, pool: asyncpg.Pool, request_: UpdateProvider, code: str, message: str
) -> None:
    before = await pool.fetch("SELECT * FROM provider_configs ORDER BY name")
    with pytest.raises(ApiError) as caught:
        await client.update_provider(request_)
    assert caught.value.code == code
    assert message in caught.value.message
    assert "\n" not in caught.value.message
    assert await pool.fetch("SELECT * FROM provider_configs ORDER BY name") == before
    assert await pool.fetchval("SELECT count(*) FROM outbox_events") == 0


async def test_negative_pool_sizes_are_refused_with_the_field_named(client: ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        await client.request(subjects.ADMIN_PROVIDERS_UPDATE, b'{"name": "local", "min_idle": -1}')
    assert caught.value.code == "invalid_argument"
    assert "min_idle" in caught.value.message
