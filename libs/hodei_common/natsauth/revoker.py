"""Revoking NATS users at run time: the platform account's JWT, re-signed with the users it
refuses, pushed to nats-server's full resolver.

The server stores the pushed JWT (and keeps it across restarts: :data:`.server.
PRELOAD_ISSUED_AT`), closes the connections of every user it now revokes, and refuses their
JWTs from then on. A push replaces the whole list, so the revoker always pushes all of it,
read from where the platform keeps it; pushing the same list again changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from hodei_common.contracts import subjects
from hodei_common.errors import HodeiError
from hodei_common.natsauth import jwt
from hodei_common.natsauth.keys import KeyKind, NKey, NKeyError
from hodei_common.natsauth.server import Issuer, PlatformAccount

OK = 200


class RevocationError(HodeiError):
    """The server did not take the account's JWT (or did not answer)."""


def platform_account(operator_seed_file: Path, issuer: Issuer) -> PlatformAccount:
    """The platform account as the provisioner knows it: the operator's seed, and its
    :class:`Issuer` (the account it mints users of, and the signing key it mints them with,
    which the account's JWT must keep listing)."""
    operator = NKey.from_seed(operator_seed_file.read_text(), KeyKind.OPERATOR)
    return PlatformAccount(operator=operator, account=issuer.account,
                           signing_keys=(issuer.signing.public_key,))


class Revoker:
    """Keeps the servers' list of the platform account's revoked users the platform's.

    ``nc`` is a connection as a user of the system account (only it may update claims). A
    list is pushed when it differs from the last one pushed, or when the connection has
    reconnected since (the server may be a new one, or may have lost its store).
    """

    def __init__(self, account: PlatformAccount, nc: NATS, *, timeout_s: float) -> None:
        self.account = account
        self.nc = nc
        self._timeout_s = timeout_s
        self._pushed: dict[str, int] | None = None
        self._connection = -1

    async def check(self) -> None:
        """Refuse an operator key the servers do not trust: the JWT they hold for the account
        must be this operator's. (They would store one signed by another all the same, and
        then let no user of the account in.)"""
        lookup = subjects.claims_lookup(self.account.account)
        try:
            reply = await self.nc.request(lookup, b"", timeout=self._timeout_s)
            issuer = jwt.decode(reply.data.decode()).get("iss")
        except (NatsError, TimeoutError, NKeyError) as e:
            raise RevocationError(f"cannot read the account's JWT from the servers: "
                                  f"{e or type(e).__name__}") from e
        if issuer != self.account.operator.public_key:
            raise RevocationError(f"the servers trust the account {self.account.account} of "
                                  f"operator {issuer}, not of {self.account.operator.public_key}")

    async def apply(self, revocations: Mapping[str, int]) -> bool:
        """Have the servers refuse exactly ``revocations`` (user public key: unix seconds up
        to which its JWTs are refused); False when they had that list already."""
        wanted = dict(revocations)
        connection = self.nc.stats["reconnects"]
        if wanted == self._pushed and connection == self._connection:
            return False
        await self.push(wanted)
        self._pushed, self._connection = wanted, connection
        return True

    async def push(self, revocations: Mapping[str, int]) -> None:
        """Push the account's JWT with ``revocations``, whatever was pushed before."""
        token = self.account.jwt(revocations)
        if len(token) > self.nc.max_payload:
            raise RevocationError(
                f"{len(revocations)} revoked users make the account's JWT {len(token)} bytes, "
                f"over the {self.nc.max_payload} a message to the servers may hold: shorter "
                "agent JWT lifetimes keep fewer revoked at once")
        try:
            reply = await self.nc.request(subjects.CLAIMS_UPDATE, token.encode(),
                                           timeout=self._timeout_s)
        except (NatsError, TimeoutError) as e:
            raise RevocationError(f"no server took the account's revocations: "
                                  f"{e or type(e).__name__}") from e
        _check(reply.data)


def _check(data: bytes) -> None:
    """Raise unless the server's reply says it stored the JWT."""
    try:
        answer = json.loads(data)
    except ValueError as e:
        raise RevocationError(f"the server's reply to a claims update is not JSON: {e}") from e
    status = answer.get("error") or answer.get("data") or {}
    if status.get("code") != OK:
        why = status.get("description") or status.get("message") or answer
        raise RevocationError(f"the server refused the account's revocations: {why}")
