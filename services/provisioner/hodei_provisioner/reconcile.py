"""Reconciliation: what providers run and what the database says, brought back in line.

Both directions, for every provider that can list its resources (Docker):

* a resource whose worker row is missing, ``TERMINATED`` or ``FAILED`` is destroyed;
* a worker row that is ``CREATING`` (with a resource), ``READY`` or ``BUSY`` whose resource
  is gone, or has ended while the row still counts on it, is lost (:mod:`hodei_common.
  recovery`): ``FAILED`` with the reason, and its ``ASSIGNED``/``RUNNING`` job requeued
  (attempt + 1, or ``FAILED`` "worker lost: ..." once its attempts are used up), or
  ``FAILED`` with ``OOMKilled`` when the container ran out of memory; the resource is then
  destroyed.

A ``BUSY`` worker whose agent exited 0 is left to the normal path: the agent reported its
job before exiting, and the scheduler retires the worker as it applies that report.
``TERMINATING`` workers are the release consumer's. One pass at a time runs across
replicas (a transaction-scoped advisory lock), at start and then every interval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from uuid import UUID

from hodei_common.contracts.providers import ProviderSettings, load_settings, settings_type
from hodei_common.contracts.workers import WorkerState
from hodei_common.database import LOCK_RECONCILE, exclusive
from hodei_common.errors import ValidationError
from hodei_common.lifecycle import workers
from hodei_common.recovery import Fate
from hodei_provisioner import store
from hodei_provisioner.handlers import Deps
from hodei_provisioner.providers import Provider, Resource
from hodei_provisioner.providers.base import OOM_KILLED

log = logging.getLogger(__name__)



@dataclass
class Reconciled:
    """What one pass did: resources destroyed, and workers declared lost (with why)."""

    destroyed: list[str] = field(default_factory=list)
    lost: dict[UUID, str] = field(default_factory=dict)


async def reconcile(deps: Deps) -> Reconciled | None:
    """One pass over every provider that can list its resources; None if another replica
    is running one."""
    # The lock's transaction stays open while providers are asked (slow HTTP calls): it
    # holds nothing but the lock (see exclusive), and it cannot outlive the pass.
    async with exclusive(deps.pool, LOCK_RECONCILE) as mine:
        if not mine:
            return None
        done = Reconciled()
        async with deps.pool.acquire() as conn:
            configs = await store.provider_scopes(conn)
        for config in configs:
            provider = deps.providers.get(config.kind)
            if provider is None:
                continue
            try:
                settings = load_settings(settings_type(config.kind), config.settings)
            except ValidationError as e:
                log.warning("provider %r has invalid settings (%s): not reconciled",
                            config.name, e)
                continue
            await _reconcile_provider(deps, provider, config.name, str(config.id), settings,
                                      done)
        return done


async def _reconcile_provider(
    deps: Deps, provider: Provider, name: str, scope: str, settings: ProviderSettings,
    done: Reconciled,
) -> None:
    # Order matters. Live rows are read before the listing: a row that had its resource id
    # then had a resource, so a resource missing from the later listing is really gone.
    # The rows of listed resources are read after it: every worker row is inserted before
    # its resource is made, so a listed resource without a row has none.
    async with deps.pool.acquire() as conn:
        live = await store.live_workers_with_resource(conn, name)
    found = await provider.resources(scope, settings)
    if found is None:
        return
    by_id = {r.resource_id: r for r in found}
    for row in live:
        resource = by_id.get(row.resource_id)
        reason = _why_lost(row.state, resource, provider.noun)
        if reason is not None:
            oom = resource is not None and resource.oom_killed
            # A job that ran out of memory would again: it fails. Any other loss requeues it.
            await deps.recovery.lose(row.id, reason, fate=Fate.FAIL if oom else Fate.REQUEUE,
                                     job_error=OOM_KILLED if oom else None)
            done.lost[row.id] = reason
            if resource is None:
                async with deps.pool.acquire() as conn:
                    await workers.release_failed(conn, row.id)
    owned = [r.worker_id for r in found if r.worker_id is not None]
    async with deps.pool.acquire() as conn:
        states = await store.worker_states(conn, owned)
    for resource in found:
        if resource.worker_id is None:
            continue  # not one of ours to judge: its worker label is missing or garbled
        state = states.get(resource.worker_id)
        if state is None or state in (WorkerState.TERMINATED, WorkerState.FAILED):
            await _destroy(deps, provider, resource, resource.worker_id, state, settings)
            done.destroyed.append(resource.resource_id)


def _why_lost(state: WorkerState, resource: Resource | None, noun: str) -> str | None:
    """Why a live worker is lost, or None when its resource is as it should be."""
    if resource is None:
        return f"its {noun} is gone"
    if resource.alive:
        return None
    if state is WorkerState.BUSY and resource.exit_code == 0:
        # The agent reported its job before exiting (even one whose process the OOM killer
        # took, which marks the container OOMKilled too); the scheduler retires it.
        return None
    if resource.oom_killed:
        return f"{OOM_KILLED}: its {noun} ran out of memory"
    if resource.reason:
        return f"its {noun} ended: {resource.reason}"
    return f"its {noun} exited with code {resource.exit_code}"


async def _destroy(
    deps: Deps, provider: Provider, resource: Resource, worker_id: UUID,
    state: WorkerState | None, settings: ProviderSettings,
) -> None:
    log.info("removing %s of %s worker %s", resource.resource_id[:40], state or "unknown",
             worker_id)
    await provider.destroy(resource.resource_id, worker_id=worker_id, settings=settings)
    if state is WorkerState.FAILED:
        async with deps.pool.acquire() as conn:
            await workers.release_failed(conn, worker_id)
