"""The provisioner's work: create a requested worker, exchange its token, release it.

Every step is idempotent: a redelivered message finds its change already applied (a
conditional UPDATE that matches no row) and does nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from hodei_common import tracing
from hodei_common.contracts.agent import RegisterReply, RegisterRequest, RenewReply
from hodei_common.contracts.providers import ProviderSettings, load_settings, settings_type
from hodei_common.contracts.workers import (
    ProvisionRequested,
    WorkerFailed,
    WorkerMode,
    WorkerState,
    WorkerTerminating,
)
from hodei_common.database import Conn
from hodei_common.endpoints import one_line
from hodei_common.errors import PermissionDeniedError, RetryLater, ValidationError
from hodei_common.lifecycle import workers
from hodei_common.metrics import Metrics
from hodei_common.natsauth import KeyKind, NKey, permissions
from hodei_common.natsauth.server import Issuer
from hodei_common.recovery import Recovery
from hodei_provisioner import store, tokens
from hodei_provisioner.providers import CannotStart, Provider, WorkerSpec

log = logging.getLogger(__name__)

ACTOR = "provisioner"
MAX_HOSTNAME_CHARS = 255
_LEASE_SLACK_S = 0.5
AGENT_IDLE_FACTOR = 2.0
# States in which a worker's resource should go: TERMINATED again on a redelivery.
_RELEASABLE = (WorkerState.TERMINATING, WorkerState.TERMINATED, WorkerState.FAILED)


class RegistrationDenied(PermissionDeniedError):
    """An agent may not register; the message is one line and never quotes the token."""


class RenewalDenied(PermissionDeniedError):
    """An agent's NATS user is not renewed: its worker is not live (or has no agent key)."""


@dataclass(frozen=True, kw_only=True)
class Deps:
    """What the handlers work with."""

    pool: asyncpg.Pool
    providers: Mapping[str, Provider]  # by kind
    token_ttl_s: float
    heartbeat_interval_s: float
    agent_nats_url: str
    recovery: Recovery
    # How long agents' NATS users live: see :func:`agent_jwt_expiry`.
    agent_jwt_lifetime_s: float
    agent_jwt_grace_s: float
    # Mints agents' NATS users; None when NATS asks for no credentials.
    issuer: Issuer | None = None
    metrics: Metrics = field(default_factory=Metrics)


def worker_settings(worker: store.WorkerRow) -> ProviderSettings:
    """The worker's provider settings as its kind's struct; a stored document that is not
    valid raises :class:`ValidationError` saying what is wrong (the worker is then failed)."""
    try:
        return load_settings(settings_type(worker.kind), worker.settings)
    except ValidationError as e:
        raise ValidationError(f"provider {worker.provider!r} has invalid settings: {e}") from e


def _settings_or_none(worker: store.WorkerRow) -> ProviderSettings | None:
    """The worker's provider settings, or None when they are no longer valid (a provider
    then uses what the resource id says)."""
    try:
        return worker_settings(worker)
    except ValidationError:
        return None


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
        settings = ProviderSettings()
        if reason is None:
            try:
                settings = worker_settings(worker)
            except ValidationError as e:
                reason = str(e)
        if reason is None:
            await store.issue_token(conn, worker.id, tokens.digest(token), deps.token_ttl_s)
            await workers.begin_create(conn, worker.id)
    if reason is not None:
        await _fail(deps, worker, reason)
        return
    provider = deps.providers[worker.kind]
    with tracing.tracer().start_as_current_span(
            f"provisioner create {worker.kind}",
            attributes={tracing.WORKER_ID: str(worker.id)}):
        resource_id = await _create(deps, provider, worker, settings, token)
    if resource_id is not None:
        await _record_resource(deps, provider, worker, resource_id, settings)


async def _create(deps: Deps, provider: Provider, worker: store.WorkerRow,
                  settings: ProviderSettings, token: str) -> str | None:
    """The worker's resource, its agent handed the job's trace; None when it could not be
    made (the worker, and the job when no worker like it can start, failed)."""
    spec = WorkerSpec(worker_id=worker.id, token=token, nats_url=deps.agent_nats_url,
                      mode=worker.mode, provider=worker.provider, scope=str(worker.provider_id),
                      image=worker.image, settings=settings, job_id=worker.for_job_id,
                      job_timeout_s=worker.job_timeout_s if worker.mode is WorkerMode.EPHEMERAL
                      else None,
                      cpus=worker.cpus or settings.cpus,
                      memory_bytes=worker.memory_bytes or settings.memory_bytes,
                      bootstrap_creds=_bootstrap_creds(deps, worker.id),
                      trace_env=tracing.environ_context())
    try:
        return await provider.create(spec)
    except CannotStart as e:  # nor would another: the job it was made for fails too
        error = spec.redact(str(e))
        log.warning("worker %s cannot start: %s", worker.id, error)
        async with deps.pool.acquire() as conn:
            await workers.cannot_start(conn, worker.ref, one_line(error),
                                       job_error=one_line(error), created=False, actor=ACTOR)
        return None
    except Exception as e:  # whatever broke, this worker will not come up: fail it
        error = spec.redact(str(e)) or type(e).__name__
        log.warning("worker %s: the %s provider could not create it: %s", worker.id,
                    worker.kind, error)
        await _fail(deps, worker, f"the {worker.kind} provider could not create the worker: "
                                  f"{error}")
        return None


def _bootstrap_creds(deps: Deps, worker_id: UUID) -> str | None:
    """Credentials for the agent's register request alone, expiring with its token; None
    when NATS asks for none."""
    if deps.issuer is None:
        return None
    user = deps.issuer.new_user(permissions.bootstrap(worker_id),
                                expires_at=time.time() + deps.token_ttl_s)
    return user.creds


async def _record_resource(
    deps: Deps, provider: Provider, worker: store.WorkerRow, resource_id: str,
    settings: ProviderSettings,
) -> None:
    try:
        async with deps.pool.acquire() as conn:
            recorded = await workers.record_resource(conn, worker.ref, resource_id, actor=ACTOR)
    except BaseException:
        # Unrecorded, nothing would ever destroy it: undo, and let the redelivery start over.
        await _destroy_quietly(provider, resource_id, worker.id, settings)
        await _retire_quietly(deps, worker.id)
        raise
    if not recorded:
        # The worker was given up (or another replica recorded its own resource) meanwhile.
        log.info("worker %s no longer wants resource %s; destroying it", worker.id, resource_id)
        await _destroy_quietly(provider, resource_id, worker.id, settings)
        return
    status = provider.describe(resource_id)
    if status is None:
        return
    try:
        async with deps.pool.acquire() as conn:
            await workers.note_status(conn, worker.id, status)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        # Only a note for people: the worker is made all the same.
        log.warning("worker %s: could not note its resource's status: %s", worker.id, e)


async def _destroy_quietly(provider: Provider, resource_id: str, worker_id: UUID,
                           settings: ProviderSettings) -> None:
    try:
        await provider.destroy(resource_id, worker_id=worker_id, settings=settings)
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
    async with deps.pool.acquire() as conn:
        failed = await workers.fail_create(conn, worker.ref, one_line(error), actor=ACTOR)
    if not failed:
        log.info("worker %s left CREATING before it could be failed", worker.id)


# --- registration ------------------------------------------------------------------------
def validate_register(req: RegisterRequest, *, key_required: bool = False) -> str | None:
    """The hostname to store (None when not given); raises on a malformed request."""
    if key_required and (req.public_key is None
                         or NKey.kind_of(req.public_key) is not KeyKind.USER):
        raise ValidationError("public_key must be the agent's own nkey user public key")
    if len(req.hostname) > MAX_HOSTNAME_CHARS:
        raise ValidationError(f"hostname is longer than {MAX_HOSTNAME_CHARS} characters")
    if "\0" in req.hostname:
        raise ValidationError("hostname must not contain NUL bytes")
    return req.hostname or None


async def register(deps: Deps, req: RegisterRequest) -> RegisterReply:
    """Spend the worker's bootstrap token and make the worker READY, in one transaction."""
    hostname = validate_register(req, key_required=deps.issuer is not None)
    token_hash = tokens.digest(req.token)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await store.spend_token(conn, token_hash, req.worker_id):
            raise RegistrationDenied(await _why_refused(conn, token_hash, req.worker_id))
        # raising below rolls the spent token back: nothing changes
        worker = await store.get_worker(conn, req.worker_id)
        if worker is None:
            raise RegistrationDenied(f"worker {req.worker_id} does not exist")
        row = await workers.register(conn, worker.ref, hostname, actor=ACTOR,
                                     public_key=req.public_key if deps.issuer else None)
        if row is None:
            raise RegistrationDenied(f"worker {req.worker_id} is {worker.state}; it cannot "
                                     "register")
        user_jwt = await _agent_jwt(deps, conn, req.worker_id, worker.mode, req.public_key)
    log.info("worker %s registered (host %s, pid %s)", req.worker_id, hostname, req.pid)
    deps.metrics.worker_provision.labels(worker.provider).observe(row["provision_s"])
    settings = _agent_settings(worker.provider, row["settings"] or {})
    idle_ttl_s = settings.idle_ttl_s
    return RegisterReply(
        user_jwt=user_jwt,
        worker_id=req.worker_id,
        mode=WorkerMode(row["mode"]),
        heartbeat_interval_s=deps.heartbeat_interval_s,
        max_jobs=settings.max_jobs,
        # The scheduler retires idle workers at idle_ttl_s; the agent's own limit is only a
        # backstop for a platform that is gone, late enough never to race the scheduler.
        idle_ttl_s=None if idle_ttl_s is None else AGENT_IDLE_FACTOR * idle_ttl_s + 30.0,
    )


def agent_jwt_expiry(mode: WorkerMode, work_left_s: float | None, *, lifetime_s: float,
                     grace_s: float) -> float:
    """Seconds from now until a new JWT of a worker's agent expires.

    No JWT lives longer than ``lifetime_s``: every ended worker's user is revoked until its
    last JWT expires (:mod:`revocations`), so the lifetime bounds how long the account's
    JWT lists it. An ephemeral worker's agent ends with its job, so its JWT expires earlier
    when that job's deadline (``work_left_s``) plus ``grace_s`` comes first. Its agent
    renews it while the worker lives (:func:`renew`), across a long job too.
    """
    if work_left_s is None or mode is not WorkerMode.EPHEMERAL:
        return lifetime_s
    return min(max(work_left_s, 0.0) + grace_s, lifetime_s)


async def _agent_jwt(deps: Deps, conn: Conn, worker_id: UUID, mode: WorkerMode,
                     public_key: str | None) -> str | None:
    """The agent's NATS user, bound to the key it made (its seed never leaves it): its own
    worker's subjects, and job logs (a worker may run another job than the one it was made
    for: an ephemeral worker whose job was cancelled takes the next). Its expiry is recorded
    on the worker, in the caller's transaction; a worker no longer live gets none."""
    if deps.issuer is None or public_key is None:
        return None
    work_left_s = (await store.work_left_s(conn, worker_id)
                   if mode is WorkerMode.EPHEMERAL else None)
    left_s = agent_jwt_expiry(mode, work_left_s,
                              lifetime_s=deps.agent_jwt_lifetime_s,
                              grace_s=deps.agent_jwt_grace_s)
    expires_at = time.time() + left_s
    if not await workers.extend_credentials(conn, worker_id,
                                            datetime.fromtimestamp(expires_at, UTC)):
        raise RenewalDenied(f"worker {worker_id} is no longer live: its agent's NATS user "
                            "is not renewed")
    return deps.issuer.bind(public_key, permissions.agent(worker_id), expires_at=expires_at)


async def renew(deps: Deps, worker_id: UUID) -> RenewReply:
    """A fresh NATS user JWT for a live (READY or BUSY) worker's agent, for the key it
    registered (:func:`agent_jwt_expiry`)."""
    if deps.issuer is None:
        raise RenewalDenied("this platform mints no NATS users: there is nothing to renew")
    async with deps.pool.acquire() as conn, conn.transaction():
        known = await store.agent_key(conn, worker_id)
        if known is None:
            raise RenewalDenied(f"worker {worker_id} does not exist")
        if known.state not in (WorkerState.READY, WorkerState.BUSY):
            raise RenewalDenied(f"worker {worker_id} is {known.state}: its agent's NATS user "
                                "is not renewed")
        if known.public_key is None:
            raise RenewalDenied(f"worker {worker_id}'s agent registered no NATS key")
        user_jwt = await _agent_jwt(deps, conn, worker_id, known.mode, known.public_key)
    assert user_jwt is not None
    return RenewReply(user_jwt=user_jwt)


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


def _agent_settings(provider: str, document: Mapping[str, object]) -> ProviderSettings:
    """The common settings an agent is told, only as backstops: the scheduler enforces them
    from the row itself. A document broken since the worker was made gives none."""
    try:
        return load_settings(ProviderSettings, document)
    except ValidationError as e:
        log.warning("provider %r has invalid settings: %s; its agent gets no job or idle "
                    "limit", provider, e)
        return ProviderSettings()


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
            await provider.destroy(worker.provider_resource_id, worker_id=worker.id,
                                   settings=_settings_or_none(worker))
    async with deps.pool.acquire() as conn:
        if worker.state is WorkerState.TERMINATING:
            await workers.terminate(conn, worker.ref, getattr(event, "reason", ""),
                                    actor=ACTOR)
        elif worker.state is WorkerState.FAILED:
            await workers.release_failed(conn, worker.id)


