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
        name="local", worker_mode=WorkerMode.REUSABLE, min_idle=2, max_jobs=10, idle_ttl_s=60))
    assert updated.worker_mode is WorkerMode.REUSABLE
    assert updated.min_idle == 2
    assert updated.settings == {"max_jobs": 10, "idle_ttl_s": 60}
    assert (updated.enabled, updated.max_workers) == (before.enabled, before.max_workers)
    cleared = await client.update_provider(UpdateProvider(name="local", max_jobs=0))
    assert cleared.settings == {"idle_ttl_s": 60}
    audit = await pool.fetch("SELECT event_type, payload FROM domain_events "
                             "WHERE aggregate_type = 'provider' ORDER BY seq")
    assert [a["event_type"] for a in audit] == ["ProviderUpdated", "ProviderUpdated"]
    assert audit[0]["payload"]["changes"]["worker_mode"] == "reusable"


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (UpdateProvider(name="mainframe", min_idle=1), "not_found", "unknown provider"),
        (UpdateProvider(name="local"), "invalid_argument", "nothing to change"),
        (UpdateProvider(name="local", min_idle=99), "invalid_argument",
         "min_idle cannot be larger than max_workers"),
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
    assert await pool.fetch("SELECT * FROM provider_configs ORDER BY name") == before
    assert await pool.fetchval("SELECT count(*) FROM outbox_events") == 0


async def test_negative_pool_sizes_are_refused_with_the_field_named(client: ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        await client.request(subjects.API_PROVIDERS_UPDATE, b'{"name": "local", "min_idle": -1}')
    assert caught.value.code == "invalid_argument"
    assert "min_idle" in caught.value.message
