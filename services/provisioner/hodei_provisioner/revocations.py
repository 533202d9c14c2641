"""The NATS users the provisioner revokes: those of ended workers' agents.

A worker that ended may have left its agent's user valid: a lost one (FAILED, whoever found
it: the supervisor's heartbeat check, a provider's news, reconciliation) may still have an
agent running somewhere, connected with the user it registered, and a terminated one's JWT
lives on after its agent, for whoever got hold of it. The list is read from PostgreSQL on
every pass, so it outlives every process; the :class:`~hodei_common.natsauth.revoker.Revoker`
pushes it only when it changed (or its connection was re-made), so every replica may run
passes: each pushes the whole list as the database has it.

An agent's JWTs are short-lived (:func:`~hodei_provisioner.handlers.agent_jwt_expiry`), none is
issued once its worker ended, and the worker row keeps the latest expiry of those issued
(``nats_jwt_expires_at``): every JWT of the key issued up to then is refused, and once that
has passed the revocation protects nothing and is dropped, which keeps the account's JWT
small. The stored expiry, not a setting, decides, so a shorter lifetime configured later
cannot drop a revocation early.
"""

from __future__ import annotations

import asyncpg

from hodei_common.natsauth.revoker import Revoker
from hodei_provisioner import store

# A JWT's expiry is stamped by a provisioner's clock and compared by nats-server's, the
# revocation's end by PostgreSQL's: a revocation stays a minute past the last JWT's expiry,
# so a clock off by less still has every JWT revoked.
CLOCK_SLACK_S = 60


async def revoked(pool: asyncpg.Pool) -> dict[str, int]:
    """Every user to revoke: public key, and the unix second up to which the JWTs it was
    issued are refused."""
    async with pool.acquire() as conn:
        return await store.revoked_agent_keys(conn, CLOCK_SLACK_S)


async def keep_revoked(pool: asyncpg.Pool, revoker: Revoker) -> int | None:
    """Have the servers revoke exactly the ended agents' users; how many, when that changed
    what they refuse (None when it did not)."""
    wanted = await revoked(pool)
    return len(wanted) if await revoker.apply(wanted) else None
