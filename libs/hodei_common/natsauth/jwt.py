"""NATS JWTs (ADR-14, v2), minted by hand: operator, account and user claims, and creds files.

A JWT is ``base64url(header).base64url(claims).base64url(signature)`` without padding; the
signature is the issuer's ed25519 signature of the first two parts. As the Go library does,
``jti`` is the base32 (no padding) SHA-512/256 of the standard claims with ``jti`` left out,
so the same claims issued in the same second get the same id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from hodei_common.natsauth.keys import KeyKind, NKey, NKeyError, write_secret

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
VERSION = 2
NO_LIMIT = -1
# What an account may use: everything, JetStream included (0 would switch JetStream off).
ACCOUNT_LIMITS: dict[str, Any] = {
    "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT,
    "imports": NO_LIMIT, "exports": NO_LIMIT, "wildcards": True,
    "conn": NO_LIMIT, "leaf": NO_LIMIT,
}
JETSTREAM_LIMITS: dict[str, Any] = {
    "mem_storage": NO_LIMIT, "disk_storage": NO_LIMIT, "streams": NO_LIMIT,
    "consumer": NO_LIMIT, "max_ack_pending": NO_LIMIT,
}
USER_LIMITS: dict[str, Any] = {"subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT}
# The standard claims in the Go library's field order: its jti hashes them serialised so.
_STANDARD = ("aud", "exp", "jti", "iat", "iss", "name", "nbf", "sub")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def claim_id(standard: dict[str, Any]) -> str:
    """The ``jti`` of a claim set: base32 SHA-512/256 of its standard claims without ``jti``."""
    fields = {k: standard[k] for k in _STANDARD if k != "jti" and standard.get(k)}
    digest = hashlib.new("sha512_256", _json(fields)).digest()
    return base64.b32encode(digest).rstrip(b"=").decode()


def encode(
    issuer: NKey,
    subject: str,
    name: str,
    nats: dict[str, Any],
    *,
    expires_at: float | None = None,
    issued_at: float | None = None,
) -> str:
    """Sign a claim set: ``nats`` is the type-specific part (``type`` and ``version`` added)."""
    standard: dict[str, Any] = {
        "exp": int(expires_at) if expires_at is not None else None,
        "iat": int(issued_at if issued_at is not None else time.time()),
        "iss": issuer.public_key,
        "name": name,
        "sub": subject,
    }
    standard = {k: v for k, v in standard.items() if v is not None}
    claims = {**standard, "jti": claim_id(standard), "nats": {**nats, "version": VERSION}}
    signed = f"{_b64(_json(HEADER))}.{_b64(_json(claims))}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def decode(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (nats-server verifies; this is for reading)."""
    try:
        _, claims, _ = token.split(".")
        decoded: dict[str, Any] = json.loads(_unb64(claims))
    except ValueError as e:
        raise NKeyError(f"not a JWT: {e}") from e
    return decoded


def operator_jwt(operator: NKey, name: str, *, system_account: str | None = None) -> str:
    """The operator's self-signed JWT, naming the system account when there is one."""
    _check(operator, KeyKind.OPERATOR)
    nats: dict[str, Any] = {"type": "operator"}
    if system_account is not None:
        nats["system_account"] = system_account
    return encode(operator, operator.public_key, name, nats)


def account_jwt(
    operator: NKey,
    account: str,
    name: str,
    *,
    jetstream: bool = True,
    signing_keys: list[str] | None = None,
    revocations: dict[str, int] | None = None,
    issued_at: float | None = None,
) -> str:
    """An account's JWT signed by the operator; ``jetstream`` gives it unlimited JetStream
    (the system account must have none). ``signing_keys`` may issue its users besides the
    account's own key; ``revocations`` refuses each listed user's JWTs issued before (or in)
    the given second."""
    _check(operator, KeyKind.OPERATOR)
    limits = {**ACCOUNT_LIMITS, **(JETSTREAM_LIMITS if jetstream else {})}
    nats: dict[str, Any] = {"type": "account", "limits": limits,
                            "default_permissions": {"pub": {}, "sub": {}}}
    if signing_keys:
        nats["signing_keys"] = signing_keys
    if revocations:
        nats["revocations"] = revocations
    return encode(operator, account, name, nats, issued_at=issued_at)


def user_jwt(
    account: NKey,
    user: str,
    name: str,
    *,
    pub_allow: list[str],
    sub_allow: list[str],
    respond: bool = False,
    expires_at: float | None = None,
    issuer_account: str | None = None,
    tags: list[str] | None = None,
) -> str:
    """A user's JWT signed by its account (or by one of its signing keys: then
    ``issuer_account`` names the account), allowed only the listed subjects. ``respond`` lets
    it answer each request it receives once (nats ``resp``), wherever the reply goes."""
    _check(account, KeyKind.ACCOUNT)
    nats: dict[str, Any] = {
        "type": "user",
        "pub": {"allow": pub_allow},
        "sub": {"allow": sub_allow},
        **USER_LIMITS,
        "bearer_token": False,
    }
    if respond:
        nats["resp"] = {"max": 1, "ttl": 0}  # ttl 0: the server's default (two minutes)
    if issuer_account is not None:
        nats["issuer_account"] = issuer_account
    if tags:
        nats["tags"] = tags
    return encode(account, user, name, nats, expires_at=expires_at)


def _check(issuer: NKey, kind: KeyKind) -> None:
    if issuer.kind is not kind:
        raise NKeyError(f"a {kind.name.lower()} key must sign this, not a "
                        f"{issuer.kind.name.lower()} key")


def creds(user_jwt: str, seed: str) -> str:
    """A creds file's text: the user's JWT and seed, as nats-py's ``user_credentials=`` reads."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


def creds_user_jwt(text: str) -> str:
    """The user JWT of a creds file's text."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if "BEGIN NATS USER JWT" in line:
            return lines[i + 1].strip()
    raise NKeyError("not a creds file: no user JWT in it")


def write_creds(path: Path, user_jwt: str, seed: str) -> Path:
    """Write a creds file readable by its owner only; returns ``path``."""
    write_secret(path, creds(user_jwt, seed))
    return path
