"""The provisioner's work: create a requested worker, exchange its token, release it.

Every step is idempotent: a redelivered message finds its change already applied (a
conditional UPDATE that matches no row) and does nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from opentelemetry import trace

from hodei_common import outbox, sagas
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import RegisterReply, RegisterRequest
from hodei_common.contracts.workers import (
    ProvisionFailed,
    ProvisionRequested,
    WorkerCreated,
    WorkerFailed,
    WorkerReady,
    WorkerRegistered,
    WorkerState,
    WorkerTerminated,
    WorkerTerminating,
)
from hodei_common.database import Conn
from hodei_common.endpoints import one_line
from hodei_common.errors import PermissionDeniedError, RetryLater, ValidationError
from hodei_common.recovery import Recovery
from hodei_provisioner import store, tokens
from hodei_provisioner.providers import Provider, WorkerSpec

log = logging.getLogger(__name__)

ACTOR = "provisioner"
AGGREGATE_WORKER = "worker"
MAX_HOSTNAME_CHARS = 255
_LEASE_SLACK_S = 0.5
AGENT_IDLE_FACTOR = 2.0
# The provisioning saga's steps this service moves ($1: the worker; $2: an error).
CREATING_RESOURCE = sagas.step(sagas.PROVISIONING, "create_resource", sagas.StepState.RUNNING,
                               "$1")
RESOURCE_CREATED = [
    *sagas.step(sagas.PROVISIONING, "create_resource", sagas.StepState.COMPLETED, "$1",
                touch_saga=False),
    *sagas.step(sagas.PROVISIONING, "await_registration", sagas.StepState.RUNNING, "$1"),
]
# The worker is FAILED and has no resource: nothing more to undo, its job gets another.
CREATE_FAILED = sagas.step(sagas.PROVISIONING, "create_resource", sagas.StepState.FAILED, "$1",
                           error="$2", saga_state="COMPENSATED")
REGISTERED = [
    *sagas.step(sagas.PROVISIONING, "create_resource", sagas.StepState.COMPLETED, "$1",
                touch_saga=False),
    *sagas.step(sagas.PROVISIONING, "await_registration", sagas.StepState.COMPLETED, "$1",
                saga_state="COMPLETED"),
]
# States in which a worker's resource should go: TERMINATED again on a redelivery.
_RELEASABLE = (WorkerState.TERMINATING, WorkerState.TERMINATED, WorkerState.FAILED)


class RegistrationDenied(PermissionDeniedError):
    """An agent may not register; the message is one line and never quotes the token."""


@dataclass(frozen=True, kw_only=True)
class Deps:
    """What the handlers work with."""

    pool: asyncpg.Pool
    providers: Mapping[str, Provider]  # by kind
    token_ttl_s: float
    heartbeat_interval_s: float
    agent_nats_url: str
    recovery: Recovery


def _meta() -> dict[str, Any]:
    """The fields every event this service writes shares."""
    context = trace.get_current_span().get_span_context()
    return {
        "event_id": uuid4(),
        "occurred_at": datetime.now(UTC),
        "correlation_id": format(context.trace_id, "032x") if context.is_valid else None,
        "actor": ACTOR,
    }


def unavailable_reason(worker: store.WorkerRow, providers: Mapping[str, Provider]) -> str | None:
    """Why this build cannot create the worker, or None when it can."""
    if worker.kind not in providers:
        return f"provider kind {worker.kind!r} is not available in this build"
    if not worker.enabled:
        return f"provider {worker.provider!r} is disabled"
    return None


# --- provisioning ------------------------------------------------------------------------
async def provision(deps: Deps, event: ProvisionRequested) -> None:
    """Create a CREATING worker's resource with a fresh bootstrap token, once."""
    token = tokens.new_token()
    async with deps.pool.acquire() as conn, conn.transaction():
        # The row lock makes concurrent deliveries of the same request take turns.
        worker = await store.lock_worker(conn, event.worker_id)
        if worker is None:
            log.warning("provision request for unknown worker %s; ignored", event.worker_id)
            return
        if worker.state is not WorkerState.CREATING or worker.provider_resource_id is not None:
            log.info("worker %s is %s with resource %s: already provisioned", worker.id,
                     worker.state, worker.provider_resource_id)
            return
        left_s = await store.live_token_left_s(conn, worker.id)
        if left_s is not None:
            # Another delivery is creating it (or died doing so): try again once its token
            # has expired, so that at most one agent can ever register as this worker.
            raise RetryLater(left_s + _LEASE_SLACK_S, f"worker {worker.id} is being created")
        reason = unavailable_reason(worker, deps.providers)
        if reason is None:
            await store.issue_token(conn, worker.id, tokens.digest(token), deps.token_ttl_s)
            await sagas.apply(conn, CREATING_RESOURCE, worker.id)
    if reason is not None:
        await _fail(deps, worker, reason)
        return
    provider = deps.providers[worker.kind]
    spec = WorkerSpec(worker_id=worker.id, token=token, nats_url=deps.agent_nats_url,
                      mode=worker.mode, provider=worker.provider, scope=str(worker.provider_id),
                      image=worker.image, settings=worker.settings, job_id=worker.for_job_id,
                      cpus=worker.cpus or _positive(worker.settings, "cpus"),
                      memory_bytes=_whole(worker.memory_bytes
                                          or _positive(worker.settings, "memory_bytes")))
    try:
        resource_id = await provider.create(spec)
    except Exception as e:  # whatever broke, this worker will not come up: fail it
        error = str(e).replace(token, "<token>") or type(e).__name__
        log.warning("worker %s: the %s provider could not create it: %s", worker.id,
                    worker.kind, error)
        await _fail(deps, worker, f"the {worker.kind} provider could not create the worker: "
                                  f"{error}")
        return
    await _record_resource(deps, provider, worker, resource_id)


async def _record_resource(
    deps: Deps, provider: Provider, worker: store.WorkerRow, resource_id: str
) -> None:
    event = WorkerCreated(**_meta(), worker_id=worker.id, provider=worker.provider,
                          provider_resource_id=resource_id)
    try:
        async with deps.pool.acquire() as conn:
            rows = await outbox.transition(
                conn, [(outbox.FIRST_STEP, store.RECORD_RESOURCE), *RESOURCE_CREATED],
                [worker.id, resource_id],
                [outbox.Emit(event, subjects.WORKER_CREATED, AGGREGATE_WORKER, worker.id)])
            row = rows[0] if rows else None
    except BaseException:
        # Unrecorded, nothing would ever destroy it: undo, and let the redelivery start over.
        await _destroy_quietly(provider, resource_id, worker.id)
        await _retire_quietly(deps, worker.id)
        raise
    if row is None:
        # The worker was given up (or another replica recorded its own resource) meanwhile.
        log.info("worker %s no longer wants resource %s; destroying it", worker.id, resource_id)
        await _destroy_quietly(provider, resource_id, worker.id)


async def _destroy_quietly(provider: Provider, resource_id: str, worker_id: UUID) -> None:
    try:
        await provider.destroy(resource_id, worker_id=worker_id)
    except Exception as e:  # reconciliation will find it; the original error matters more
        log.error("worker %s: could not destroy unrecorded resource %s: %s", worker_id,
                  resource_id, e)


async def _retire_quietly(deps: Deps, worker_id: UUID) -> None:
    """Expire the worker's tokens if the database lets us, so a retry need not wait."""
    try:
        async with deps.pool.acquire() as conn:
            await store.retire_tokens(conn, worker_id)
    except Exception as e:  # the retry waits for the token to expire instead
        log.warning("worker %s: could not retire its token: %s", worker_id, e)


async def _fail(deps: Deps, worker: store.WorkerRow, error: str) -> None:
    error = one_line(error)
    event = ProvisionFailed(**_meta(), worker_id=worker.id, provider=worker.provider,
                            error=error)
    async with deps.pool.acquire() as conn:
        rows = await outbox.transition(
            conn, [(outbox.FIRST_STEP, store.FAIL_CREATING), *CREATE_FAILED],
            [worker.id, error],
            [outbox.Emit(event, subjects.PROVISION_FAILED, AGGREGATE_WORKER, worker.id)])
    if not rows:
        log.info("worker %s left CREATING before it could be failed", worker.id)


# --- registration ------------------------------------------------------------------------
def validate_register(req: RegisterRequest) -> str | None:
    """The hostname to store (None when not given); raises on a malformed request."""
    if len(req.hostname) > MAX_HOSTNAME_CHARS:
        raise ValidationError(f"hostname is longer than {MAX_HOSTNAME_CHARS} characters")
    if "\0" in req.hostname:
        raise ValidationError("hostname must not contain NUL bytes")
    return req.hostname or None


async def register(deps: Deps, req: RegisterRequest) -> RegisterReply:
    """Spend the worker's bootstrap token and make the worker READY, in one transaction."""
    hostname = validate_register(req)
    token_hash = tokens.digest(req.token)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await store.spend_token(conn, token_hash, req.worker_id):
            raise RegistrationDenied(await _why_refused(conn, token_hash, req.worker_id))
        registered = await store.mark_ready(conn, req.worker_id, hostname)
        if registered is None:  # raising rolls the spent token back: nothing changes
            state = await store.worker_state(conn, req.worker_id)
            if state is None:
                raise RegistrationDenied(f"worker {req.worker_id} does not exist")
            raise RegistrationDenied(f"worker {req.worker_id} is {state}; it cannot register")
        await sagas.apply(conn, REGISTERED, req.worker_id)
        common: dict[str, Any] = {"worker_id": req.worker_id, "provider": registered.provider}
        await outbox.record(conn, subject=subjects.WORKER_REGISTERED,
                            event=WorkerRegistered(**_meta(), **common),
                            aggregate_type=AGGREGATE_WORKER, aggregate_id=req.worker_id)
        await outbox.record(conn, subject=subjects.WORKER_READY,
                            event=WorkerReady(**_meta(), **common),
                            aggregate_type=AGGREGATE_WORKER, aggregate_id=req.worker_id)
    log.info("worker %s registered (host %s, pid %s)", req.worker_id, hostname, req.pid)
    max_jobs = _positive(registered.settings, "max_jobs")
    idle_ttl_s = _positive(registered.settings, "idle_ttl_s")
    return RegisterReply(
        worker_id=req.worker_id,
        mode=registered.mode,
        heartbeat_interval_s=deps.heartbeat_interval_s,
        max_jobs=None if max_jobs is None else int(max_jobs),
        # The scheduler retires idle workers at idle_ttl_s; the agent's own limit is only a
        # backstop for a platform that is gone, late enough never to race the scheduler.
        idle_ttl_s=None if idle_ttl_s is None else AGENT_IDLE_FACTOR * idle_ttl_s + 30.0,
    )


async def _why_refused(conn: Conn, token_hash: bytes, worker_id: UUID) -> str:
    token = await store.find_token(conn, token_hash)
    if token is None:
        return "unknown bootstrap token"
    if token.worker_id != worker_id:
        return "bootstrap token belongs to another worker"
    if token.used:
        return "bootstrap token was already used"
    if token.expired:
        return "bootstrap token expired"
    return "bootstrap token could not be used; try again"


def _positive(settings: Mapping[str, Any], key: str) -> float | None:
    """A provider setting that must be a positive number; None when absent or not one."""
    value = settings.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)


# --- release -----------------------------------------------------------------------------
async def release(deps: Deps, event: WorkerTerminating | WorkerFailed) -> None:
    """Destroy a terminating (or failed) worker's resource; TERMINATING becomes TERMINATED."""
    async with deps.pool.acquire() as conn:
        worker = await store.get_worker(conn, event.worker_id)
    if worker is None:
        log.warning("release of unknown worker %s; ignored", event.worker_id)
        return
    if worker.state not in _RELEASABLE:
        log.warning("worker %s is %s, not terminating; release ignored", worker.id, worker.state)
        return
    if worker.provider_resource_id is not None:
        provider = deps.providers.get(worker.kind)
        if provider is None:
            log.warning("worker %s: no %s provider in this build to destroy %s", worker.id,
                        worker.kind, worker.provider_resource_id)
        else:
            await provider.destroy(worker.provider_resource_id, worker_id=worker.id)
    async with deps.pool.acquire() as conn:
        if worker.state is WorkerState.TERMINATING:
            await outbox.change(
                conn, store.TERMINATE, worker.id,
                subject=subjects.WORKER_TERMINATED,
                event=WorkerTerminated(**_meta(), worker_id=worker.id,
                                       provider=worker.provider,
                                       reason=getattr(event, "reason", "")),
                aggregate_type=AGGREGATE_WORKER, aggregate_id=worker.id,
            )
        elif worker.state is WorkerState.FAILED:
            await store.mark_failed_released(conn, worker.id)


