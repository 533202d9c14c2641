"""The trust a nats-server in operator mode needs, and the users it then lets in.

:class:`Trust` holds the operator, the platform's account (with JetStream) and the system
account; :meth:`Trust.server_config` is the config-file fragment that makes nats-server trust
them (``operator``, ``system_account``, a full resolver seeded with both accounts, which takes
the platform account's JWT anew at run time: its revocations, :mod:`.revoker`), and
:meth:`Trust.user` mints a user of the platform's account with a role's permissions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hodei_common.natsauth import jwt
from hodei_common.natsauth.keys import KeyKind, NKey, NKeyError, write_secret
from hodei_common.natsauth.permissions import Permissions, Role, revoker, role

OPERATOR_NAME = "hodei"
ACCOUNT_NAME = "HODEI"
SYSTEM_ACCOUNT_NAME = "SYS"
# When the preloaded account JWTs say they were issued: before anything pushed at run time, so
# that nats-server keeps the JWT it stored (revocations and all) over the preload when it
# restarts; the preload only seeds an empty store. The server keeps the newer of the two.
PRELOAD_ISSUED_AT = 1_700_000_000  # 2023-11-14
_SEED_FILES = {"operator": KeyKind.OPERATOR, "account": KeyKind.ACCOUNT,
               "system": KeyKind.ACCOUNT, "signing": KeyKind.ACCOUNT}


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
class PlatformAccount:
    """What the platform account's JWT says besides its revocations, and the operator key
    that signs it: whoever holds this can re-sign it with another list of revoked users."""

    operator: NKey
    account: str  # its public key
    signing_keys: tuple[str, ...]

    def jwt(self, revocations: Mapping[str, int] | None = None, *,
            issued_at: float | None = None) -> str:
        """The account's JWT; ``revocations`` refuses each listed user public key's JWTs
        issued at or before its time (unix seconds)."""
        return jwt.account_jwt(self.operator, self.account, ACCOUNT_NAME,
                               signing_keys=list(self.signing_keys),
                               revocations=dict(revocations or {}), issued_at=issued_at)


@dataclass(frozen=True)
class Issuer:
    """What mints users at run time: a signing key of the platform's account (the
    provisioner holds one, for its agents), not the account's own key."""

    signing: NKey
    account: str  # the account's public key, which the users' JWTs name

    @classmethod
    def load(cls, seed_file: Path, own_creds: Path) -> Issuer:
        """The signing key in ``seed_file``, for the account of the user in ``own_creds``
        (the service's own creds file names its account)."""
        claims = jwt.decode(jwt.creds_user_jwt(own_creds.read_text()))
        account = claims["nats"].get("issuer_account") or claims["iss"]
        return cls(signing=NKey.from_seed(seed_file.read_text(), KeyKind.ACCOUNT),
                   account=account)

    def new_user(self, permissions: Permissions, *, expires_at: float | None = None
                 ) -> UserCredentials:
        """A user with a key pair made here (its seed goes with the credentials)."""
        key = NKey.create(KeyKind.USER)
        return UserCredentials(name=permissions.identity, jwt=self.bind(
            key.public_key, permissions, expires_at=expires_at), seed=key.seed,
            inbox_prefix=permissions.inbox_prefix)

    def bind(self, public_key: str, permissions: Permissions, *,
             expires_at: float | None = None) -> str:
        """A JWT for a key pair someone else made and keeps (an agent's): only the holder of
        its seed can connect with it."""
        if NKey.kind_of(public_key) is not KeyKind.USER:
            raise NKeyError("not a user public key")
        return jwt.user_jwt(
            self.signing, public_key, permissions.identity,
            pub_allow=list(permissions.publish), sub_allow=list(permissions.subscribe),
            respond=permissions.respond, expires_at=expires_at,
            tags=list(permissions.tags), issuer_account=self.account)


@dataclass(frozen=True)
class Trust:
    """An operator, the platform's account (with a signing key) and the system account."""

    operator: NKey
    account: NKey
    system: NKey
    signing: NKey

    @classmethod
    def create(cls) -> Trust:
        """New keys for a new platform."""
        return cls(operator=NKey.create(KeyKind.OPERATOR), account=NKey.create(KeyKind.ACCOUNT),
                   system=NKey.create(KeyKind.ACCOUNT), signing=NKey.create(KeyKind.ACCOUNT))

    @classmethod
    def load_or_create(cls, directory: Path) -> Trust:
        """The keys saved in ``directory``, made and saved there first if there are none."""
        if not (directory / "operator.nk").exists():
            cls.create().save(directory)
        return cls.load(directory)

    @property
    def issuer(self) -> Issuer:
        return Issuer(signing=self.signing, account=self.account.public_key)

    @property
    def platform_account(self) -> PlatformAccount:
        return PlatformAccount(operator=self.operator, account=self.account.public_key,
                               signing_keys=(self.signing.public_key,))

    def signing_key_file(self, directory: Path) -> Path:
        """Where :meth:`save` put the signing key's seed (for the provisioner)."""
        return directory / "signing.nk"

    def operator_key_file(self, directory: Path) -> Path:
        """Where :meth:`save` put the operator's seed (the provisioner re-signs the account's
        JWT with it to revoke users)."""
        return directory / "operator.nk"

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

    def account_jwt(self, *, issued_at: float | None = None) -> str:
        return self.platform_account.jwt(issued_at=issued_at)

    def system_jwt(self, *, issued_at: float | None = None) -> str:
        return jwt.account_jwt(self.operator, self.system.public_key, SYSTEM_ACCOUNT_NAME,
                               jetstream=False, issued_at=issued_at)

    def system_user(self, permissions: Permissions) -> UserCredentials:
        """A new user of the system account (the revoker's), allowed only ``permissions``."""
        key = NKey.create(KeyKind.USER)
        token = jwt.user_jwt(self.system, key.public_key, permissions.identity,
                             pub_allow=list(permissions.publish),
                             sub_allow=list(permissions.subscribe))
        return UserCredentials(name=permissions.identity, jwt=token, seed=key.seed,
                               inbox_prefix=permissions.inbox_prefix)

    def user(self, permissions: Permissions, *, expires_at: float | None = None,
             signer: NKey | None = None) -> UserCredentials:
        """A new user with ``permissions``, signed by the platform's account (or ``signer``,
        which only a test of refusals wants)."""
        key = NKey.create(KeyKind.USER)
        token = jwt.user_jwt(
            signer or self.account, key.public_key, permissions.identity,
            pub_allow=list(permissions.publish), sub_allow=list(permissions.subscribe),
            respond=permissions.respond, expires_at=expires_at,
            tags=list(permissions.tags),
        )
        return UserCredentials(name=permissions.identity, jwt=token, seed=key.seed,
                               inbox_prefix=permissions.inbox_prefix)

    def write_creds(self, directory: Path) -> None:
        """A creds file per service role, and the CLI's, as ``<identity>.creds`` (0600):
        minted anew each time (JWTs without expiry; the keys are the state)."""
        for which in Role:
            user = self.user(role(which))
            user.write(directory / f"{user.name}.creds")

    def revoker_creds_file(self, directory: Path) -> Path:
        """Where :meth:`write_revoker_creds` puts the revoker's creds file."""
        return directory / "revoker.creds"

    def write_revoker_creds(self, directory: Path) -> Path:
        """Write the revoker's creds file (a system-account user) in ``directory``: beside
        the keys, not with the services' creds, for the provisioner alone."""
        return self.system_user(revoker()).write(self.revoker_creds_file(directory))

    def server_config(self, jwt_dir: Path) -> str:
        """The nats-server config lines for operator mode (JWTs quoted as JSON strings, which
        the server's config syntax reads alike): a full resolver keeps account JWTs pushed at
        run time in ``jwt_dir``, across restarts; deleting accounts is not allowed."""
        preload = {self.account.public_key: self.account_jwt(issued_at=PRELOAD_ISSUED_AT),
                   self.system.public_key: self.system_jwt(issued_at=PRELOAD_ISSUED_AT)}
        resolver = {"type": "full", "dir": str(jwt_dir), "allow_delete": False,
                    "interval": "2m"}
        lines = [
            f"operator: {json.dumps(self.operator_jwt())}",
            f"system_account: {json.dumps(self.system.public_key)}",
            f"resolver: {json.dumps(resolver)}",
            "resolver_preload: {",
            *(f"  {key}: {json.dumps(token)}" for key, token in preload.items()),
            "}",
        ]
        return "\n".join(lines) + "\n"
