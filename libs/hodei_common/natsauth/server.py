"""The trust a nats-server in operator mode needs, and the users it then lets in.

:class:`Trust` holds the operator, the platform's account (with JetStream) and the system
account; :meth:`Trust.server_config` is the config-file fragment that makes nats-server trust
them (``operator``, ``system_account``, a memory resolver preloaded with both accounts), and
:meth:`Trust.user` mints a user of the platform's account with a role's permissions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hodei_common.natsauth import jwt
from hodei_common.natsauth.keys import KeyKind, NKey, write_secret
from hodei_common.natsauth.permissions import Permissions

OPERATOR_NAME = "hodei"
ACCOUNT_NAME = "HODEI"
SYSTEM_ACCOUNT_NAME = "SYS"
_SEED_FILES = {"operator": KeyKind.OPERATOR, "account": KeyKind.ACCOUNT,
               "system": KeyKind.ACCOUNT}


@dataclass(frozen=True)
class UserCredentials:
    """A minted user: its JWT and seed, and the inbox prefix its connection must use."""

    name: str
    jwt: str = field(repr=False)
    seed: str = field(repr=False)
    inbox_prefix: str

    @property
    def creds(self) -> str:
        """The creds file's text."""
        return jwt.creds(self.jwt, self.seed)

    def write(self, path: Path) -> Path:
        """Write the creds file (0600) for ``user_credentials=``."""
        return jwt.write_creds(path, self.jwt, self.seed)


@dataclass(frozen=True)
class Trust:
    """An operator, the platform's account and the system account, with their JWTs."""

    operator: NKey
    account: NKey
    system: NKey

    @classmethod
    def create(cls) -> Trust:
        """New keys for a new platform."""
        return cls(operator=NKey.create(KeyKind.OPERATOR), account=NKey.create(KeyKind.ACCOUNT),
                   system=NKey.create(KeyKind.ACCOUNT))

    @classmethod
    def load(cls, directory: Path) -> Trust:
        """The keys :meth:`save` wrote to ``directory``."""
        keys = {name: NKey.from_seed((directory / f"{name}.nk").read_text(), kind)
                for name, kind in _SEED_FILES.items()}
        return cls(**keys)

    def save(self, directory: Path) -> None:
        """Write the three seeds to ``directory`` (``<name>.nk``, 0600)."""
        for name in _SEED_FILES:
            key: NKey = getattr(self, name)
            write_secret(directory / f"{name}.nk", key.seed + "\n")

    # JWTs are minted anew each time: only the keys are state.
    def operator_jwt(self) -> str:
        return jwt.operator_jwt(self.operator, OPERATOR_NAME,
                                system_account=self.system.public_key)

    def account_jwt(self) -> str:
        return jwt.account_jwt(self.operator, self.account.public_key, ACCOUNT_NAME)

    def system_jwt(self) -> str:
        return jwt.account_jwt(self.operator, self.system.public_key, SYSTEM_ACCOUNT_NAME,
                               jetstream=False)

    def user(self, permissions: Permissions, *, expires_at: float | None = None,
             signer: NKey | None = None) -> UserCredentials:
        """A new user with ``permissions``, signed by the platform's account (or ``signer``,
        which only a test of refusals wants)."""
        key = NKey.create(KeyKind.USER)
        token = jwt.user_jwt(
            signer or self.account, key.public_key, permissions.identity,
            pub_allow=list(permissions.publish), sub_allow=list(permissions.subscribe),
            respond=permissions.respond, expires_at=expires_at,
        )
        return UserCredentials(name=permissions.identity, jwt=token, seed=key.seed,
                               inbox_prefix=permissions.inbox_prefix)

    def server_config(self) -> str:
        """The nats-server config lines for operator mode (JWTs quoted as JSON strings, which
        the server's config syntax reads alike)."""
        preload = {self.account.public_key: self.account_jwt(),
                   self.system.public_key: self.system_jwt()}
        lines = [
            f"operator: {json.dumps(self.operator_jwt())}",
            f"system_account: {json.dumps(self.system.public_key)}",
            "resolver: MEMORY",
            "resolver_preload: {",
            *(f"  {key}: {json.dumps(token)}" for key, token in preload.items()),
            "}",
        ]
        return "\n".join(lines) + "\n"
