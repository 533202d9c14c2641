"""SQL of the provisioner: workers, their bootstrap tokens and their providers' settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from hodei_common.contracts.workers import WorkerMode, WorkerState
from hodei_common.database import Conn
from hodei_common.lifecycle.workers import WorkerRef

_WORKER = """
SELECT w.id, w.state, w.provider, w.mode, w.provider_resource_id, w.cpus, w.memory_bytes,
       w.for_job_id, p.id AS provider_id, p.kind, p.enabled, p.image, p.settings,
       (SELECT timeout_s FROM jobs WHERE id = w.for_job_id) AS job_timeout_s
FROM workers w JOIN provider_configs p ON p.name = w.provider
WHERE w.id = $1
"""
_LOCK_WORKER = _WORKER + "FOR UPDATE OF w"

# An unspent, unexpired token means an attempt to create the worker is under way (or died
# less than a token lifetime ago): the token is that attempt's lease.
_LIVE_TOKEN_LEFT_S = """
SELECT extract(epoch FROM max(expires_at) - now())::float8 FROM worker_bootstrap_tokens
WHERE worker_id = $1 AND used_at IS NULL AND expires_at > now()
"""
_RETIRE_TOKENS = """
UPDATE worker_bootstrap_tokens SET expires_at = least(expires_at, now())
WHERE worker_id = $1 AND used_at IS NULL
"""
_INSERT_TOKEN = """
INSERT INTO worker_bootstrap_tokens (worker_id, token_hash, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3))
"""

_SPEND_TOKEN = """
UPDATE worker_bootstrap_tokens SET used_at = now()
WHERE token_hash = $1 AND worker_id = $2 AND used_at IS NULL AND expires_at > now()
RETURNING id
"""
_TOKEN = """
SELECT worker_id, used_at IS NOT NULL AS used, expires_at <= now() AS expired
FROM worker_bootstrap_tokens WHERE token_hash = $1
"""
# Lost workers (FAILED: their recovery saga says when) whose agent registered a NATS key that
# may still hold a JWT: the last one minted for it expires after now minus $1 seconds. With
# the second of their loss.
# Ended workers' agents' keys whose last JWT may still be valid, and that JWT's expiry: no
# JWT is minted for a key once its worker ended, so revoking every JWT issued up to the last
# one's expiry refuses them all, whatever the clocks of the provisioners that minted them.
_REVOKED_AGENT_KEYS = """
SELECT nats_public_key, ceil(extract(epoch FROM max(nats_jwt_expires_at)))::bigint AS until
FROM workers
WHERE state IN ('TERMINATED', 'FAILED') AND nats_public_key IS NOT NULL
  AND nats_jwt_expires_at > now() - make_interval(secs => $1)
GROUP BY nats_public_key
"""
# Seconds from now to the deadline of the work a worker has: the job it holds (from its
# start, or from now while it has not started), or, for an ephemeral worker, the job it was
# made for while that one waits; NULL when it has none. An ephemeral worker's agent's JWT
# needs to live no longer than that and a grace.
_WORK_LEFT_S = """
SELECT extract(epoch FROM max(coalesce(j.started_at, now())
                              + make_interval(secs => j.timeout_s)) - now())::float8
FROM workers AS w
JOIN jobs AS j ON j.id = w.current_job_id OR (w.mode = 'ephemeral' AND j.id = w.for_job_id)
WHERE w.id = $1 AND j.state IN ('QUEUED', 'ASSIGNED', 'RUNNING')
"""
_AGENT_KEY = """
SELECT state, mode, nats_public_key FROM workers WHERE id = $1
"""


@dataclass(frozen=True, kw_only=True)
class WorkerRow:
    """A worker with its provider's configuration."""

    id: UUID
    state: WorkerState
    provider: str
    mode: WorkerMode
    provider_resource_id: str | None
    kind: str
    enabled: bool
    image: str | None
    settings: dict[str, Any] = field(default_factory=dict)
    provider_id: UUID | None = None
    cpus: float | None = None  # None: the provider's default
    memory_bytes: int | None = None
    for_job_id: UUID | None = None
    job_timeout_s: float | None = None  # of the job it is made for

    @property
    def ref(self) -> WorkerRef:
        """The worker as its events name it."""
        return WorkerRef(self.id, self.provider, self.for_job_id)


@dataclass(frozen=True, kw_only=True)
class TokenRow:
    """What the database knows of a presented token that could not be spent."""

    worker_id: UUID
    used: bool
    expired: bool


def _worker(row: asyncpg.Record | None) -> WorkerRow | None:
    if row is None:
        return None
    return WorkerRow(
        id=row["id"], state=WorkerState(row["state"]), provider=row["provider"],
        mode=WorkerMode(row["mode"]), provider_resource_id=row["provider_resource_id"],
        kind=row["kind"], enabled=row["enabled"], image=row["image"],
        settings=dict(row["settings"] or {}), provider_id=row["provider_id"],
        cpus=row["cpus"], memory_bytes=row["memory_bytes"], for_job_id=row["for_job_id"],
        job_timeout_s=row["job_timeout_s"],
    )


async def get_worker(conn: Conn, worker_id: UUID) -> WorkerRow | None:
    """A worker and its provider's configuration."""
    return _worker(await conn.fetchrow(_WORKER, worker_id))


async def lock_worker(conn: Conn, worker_id: UUID) -> WorkerRow | None:
    """Like :func:`get_worker`, row-locked until the caller's transaction ends."""
    return _worker(await conn.fetchrow(_LOCK_WORKER, worker_id))


async def live_token_left_s(conn: Conn, worker_id: UUID) -> float | None:
    """Seconds until the worker's live unspent token expires; None when it has none."""
    left = await conn.fetchval(_LIVE_TOKEN_LEFT_S, worker_id)
    return None if left is None else float(left)


async def issue_token(conn: Conn, worker_id: UUID, token_hash: bytes, ttl_s: float) -> None:
    """Store a new token's hash for the worker."""
    await conn.execute(_INSERT_TOKEN, worker_id, token_hash, ttl_s)


async def retire_tokens(conn: Conn, worker_id: UUID) -> None:
    """Expire the worker's unspent tokens: their agents can no longer register."""
    await conn.execute(_RETIRE_TOKENS, worker_id)


async def spend_token(conn: Conn, token_hash: bytes, worker_id: UUID) -> bool:
    """Mark the worker's live, unspent token used; False when there is no such token."""
    return await conn.fetchval(_SPEND_TOKEN, token_hash, worker_id) is not None


async def find_token(conn: Conn, token_hash: bytes) -> TokenRow | None:
    """Whose token this is, and whether it is spent or expired."""
    row = await conn.fetchrow(_TOKEN, token_hash)
    if row is None:
        return None
    return TokenRow(worker_id=row["worker_id"], used=row["used"], expired=row["expired"])


# --- reconciliation ----------------------------------------------------------------------
# Providers that may have resources: enabled ones, and any that ever had a worker.
_PROVIDER_SCOPES = """
SELECT name, kind, id, settings FROM provider_configs p
WHERE enabled OR EXISTS (SELECT 1 FROM workers w WHERE w.provider = p.name)
ORDER BY name
"""
_LIVE_WITH_RESOURCE = """
SELECT id, state, provider_resource_id FROM workers
WHERE provider = $1 AND state IN ('CREATING', 'READY', 'BUSY')
  AND provider_resource_id IS NOT NULL
"""
_WORKER_STATES = "SELECT id, state FROM workers WHERE id = ANY($1::uuid[])"


@dataclass(frozen=True, kw_only=True)
class WorkerWithResource:
    """A worker that should have a live resource."""

    id: UUID
    state: WorkerState
    resource_id: str


@dataclass(frozen=True, kw_only=True)
class ProviderScope:
    """A provider that may have resources to reconcile, with its stored settings."""

    name: str
    kind: str
    id: UUID
    settings: dict[str, Any]


async def provider_scopes(conn: Conn) -> list[ProviderScope]:
    """Every provider that may have resources to reconcile."""
    return [ProviderScope(name=r["name"], kind=r["kind"], id=r["id"],
                          settings=dict(r["settings"] or {}))
            for r in await conn.fetch(_PROVIDER_SCOPES)]


async def live_workers_with_resource(conn: Conn, provider: str) -> list[WorkerWithResource]:
    """The provider's CREATING/READY/BUSY workers that have a recorded resource."""
    rows = await conn.fetch(_LIVE_WITH_RESOURCE, provider)
    return [WorkerWithResource(id=r["id"], state=WorkerState(r["state"]),
                       resource_id=r["provider_resource_id"]) for r in rows]


async def worker_states(conn: Conn, worker_ids: list[UUID]) -> dict[UUID, WorkerState]:
    """The state of each of these workers that exists."""
    rows = await conn.fetch(_WORKER_STATES, worker_ids)
    return {r["id"]: WorkerState(r["state"]) for r in rows}


async def revoked_agent_keys(conn: Conn, slack_s: float) -> dict[str, int]:
    """The NATS public keys of ended (terminated or lost) workers' agents whose last JWT
    expired less than ``slack_s`` seconds ago (or has not yet), with that expiry (unix
    seconds)."""
    rows = await conn.fetch(_REVOKED_AGENT_KEYS, slack_s)
    return {row["nats_public_key"]: row["until"] for row in rows}


# --- agents' NATS users ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class AgentKey:
    """A worker as the renewal of its agent's NATS user sees it."""

    state: WorkerState
    mode: WorkerMode
    public_key: str | None  # None: its agent registered no key


async def work_left_s(conn: Conn, worker_id: UUID) -> float | None:
    """Seconds until the job the worker holds (or, ephemeral, was made for and waits for)
    reaches its timeout; None when it has no such job."""
    left = await conn.fetchval(_WORK_LEFT_S, worker_id)
    return None if left is None else float(left)


async def agent_key(conn: Conn, worker_id: UUID) -> AgentKey | None:
    """The worker's state, mode and its agent's NATS public key; None when there is no such
    worker."""
    row = await conn.fetchrow(_AGENT_KEY, worker_id)
    if row is None:
        return None
    return AgentKey(state=WorkerState(row["state"]), mode=WorkerMode(row["mode"]),
                    public_key=row["nats_public_key"])
