"""The NATS users the provisioner revokes: those of lost workers' agents.

A worker declared lost (FAILED, whoever found it: the supervisor's heartbeat check, a
provider's news, reconciliation) may still have an agent running somewhere, connected with
the user it registered. The list is read from PostgreSQL on every pass, so it outlives every
process; the :class:`~hodei_common.natsauth.revoker.Revoker` pushes it only when it changed
(or its connection was re-made), so every replica may run passes: each pushes the whole list
as the database has it.

An agent's JWTs are short-lived (:func:`~hodei_provisioner.handlers.agent_jwt_expiry`), none is
issued once its worker is lost, and the worker row keeps the latest expiry of those issued
(``nats_jwt_expires_at``): once that has passed, the revocation protects nothing and is
dropped, which keeps the account's JWT small. The stored expiry, not a setting, decides, so a
shorter lifetime configured later cannot drop a revocation early.
"""

from __future__ import annotations

import asyncpg

from hodei_common.natsauth.revoker import Revoker
from hodei_provisioner import store

# An agent's JWT is stamped by a provisioner's clock, the loss and the expiry kept by
# PostgreSQL's: a revocation reaches a minute past the loss, and stays a minute past the last
# JWT's expiry, so a clock off by less still has every JWT revoked.
CLOCK_SLACK_S = 60


async def revoked(pool: asyncpg.Pool) -> dict[str, int]:
    """Every user to revoke: public key, and the unix second up to which its JWTs are
    refused."""
    async with pool.acquire() as conn:
        lost = await store.lost_agent_keys(conn, CLOCK_SLACK_S)
    return {key: lost_at + CLOCK_SLACK_S for key, lost_at in lost.items()}


async def keep_revoked(pool: asyncpg.Pool, revoker: Revoker) -> int | None:
    """Have the servers revoke exactly the lost agents' users; how many, when that changed
    what they refuse (None when it did not)."""
    wanted = await revoked(pool)
    return len(wanted) if await revoker.apply(wanted) else None
