"""Reconciliation across provisioner replicas: one pass at a time, and a replica that fails
or dies mid-pass never stops the others' passes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from uuid import UUID, uuid4

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from hodei_common import database
from hodei_common.contracts.providers import ProviderSettings
from hodei_common.database import LOCK_RECONCILE
from hodei_common.recovery import Recovery
from hodei_common.settings import Settings
from hodei_provisioner.handlers import Deps
from hodei_provisioner.providers import Provider, Resource, WorkerSpec
from hodei_provisioner.providers.base import ProviderError
from hodei_provisioner.reconcile import reconcile
from tests.locks import ENDINGS, Ending, Gate, end_mid_pass, next_turn

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

ORPHAN = "container-of-nobody"


class ListingProvider(Provider):
    """Lists one resource whose worker row does not exist; may wait at a gate while
    listing, as a slow engine does."""

    kind = "local"  # the seeded, enabled provider row

    def __init__(self) -> None:
        self.gate: Gate | None = None
        self.listings = 0
        self.destroyed: list[str] = []

    async def create(self, spec: WorkerSpec) -> str:
        raise AssertionError("reconciliation creates nothing")

    async def destroy(self, resource_id: str, *, worker_id: UUID,
                      settings: ProviderSettings | None = None) -> None:
        self.destroyed.append(resource_id)

    async def exists(self, resource_id: str, *, worker_id: UUID,
                     settings: ProviderSettings | None = None) -> bool:
        return resource_id not in self.destroyed

    async def resources(self, scope: str, settings: ProviderSettings | None = None
                        ) -> list[Resource] | None:
        self.listings += 1
        if self.gate is not None:
            await self.gate.wait()
        return [Resource(resource_id=ORPHAN, worker_id=uuid4(), alive=True)]


@pytest.fixture
async def replicas(settings: Settings, nc: NATS) -> AsyncIterator[list[Deps]]:
    """Two provisioner replicas' reconciliation, each with its own pool and provider."""
    async with AsyncExitStack() as stack:
        found = []
        for _ in range(2):
            pool = await database.create_pool(settings, initial_attempts=1)
            stack.push_async_callback(pool.close)
            found.append(Deps(pool=pool, providers={"local": ListingProvider()},
                              token_ttl_s=60, heartbeat_interval_s=1, agent_nats_url="",
                              recovery=Recovery(pool, nc, actor="provisioner"),
                              agent_jwt_lifetime_s=60, agent_jwt_grace_s=60))
        yield found


def provider(deps: Deps) -> ListingProvider:
    found = deps.providers["local"]
    assert isinstance(found, ListingProvider)
    return found


@pytest.mark.parametrize("ending", ENDINGS)
async def test_one_replica_reconciles_at_a_time_and_one_that_fails_or_dies_lets_go(
    replicas: list[Deps], pool: asyncpg.Pool, ending: Ending,
) -> None:
    first, second = replicas
    gate = provider(first).gate = Gate()
    slow_pass = asyncio.create_task(reconcile(first))
    await asyncio.wait_for(gate.reached.wait(), 10)

    # The second replica skips its turn while the first is asking its engine.
    assert await reconcile(second) is None
    assert (provider(second).listings, provider(second).destroyed) == (0, [])

    await end_mid_pass(ending, slow_pass, gate, ProviderError("the engine went away"),
                       pool, LOCK_RECONCILE)
    assert provider(first).destroyed == []
    outcome = await next_turn(lambda: reconcile(second))
    assert outcome.destroyed == [ORPHAN]
    assert provider(second).destroyed == [ORPHAN]
