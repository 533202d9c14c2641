"""NATS nkeys: ed25519 key pairs of operators, accounts and users, kept as their seeds.

A seed (``SO...``, ``SA...``, ``SU...``) is the secret; the public key (``O...``, ``A...``,
``U...``) names the key in JWTs. The ``nkeys`` package decodes and signs; a new seed is 32
random bytes encoded with the kind's prefix (``nkeys.encode_seed``).
"""

from __future__ import annotations

import base64
import enum
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import nkeys

from hodei_common.errors import HodeiError


class NKeyError(HodeiError):
    """A seed that is not an nkey seed of the expected kind."""


class KeyKind(enum.Enum):
    """The nkey kinds decentralized auth uses; the value is the prefix byte."""

    OPERATOR = nkeys.PREFIX_BYTE_OPERATOR
    ACCOUNT = nkeys.PREFIX_BYTE_ACCOUNT
    USER = nkeys.PREFIX_BYTE_USER


PUBLIC_KEY_BYTES = 35  # prefix byte, ed25519 key, CRC-16


@dataclass(frozen=True)
class NKey:
    """One key pair; ``seed`` is the secret, ``public_key`` its name."""

    seed: str = field(repr=False)
    public_key: str
    kind: KeyKind

    @classmethod
    def create(cls, kind: KeyKind) -> NKey:
        """A new random key pair of ``kind``."""
        seed = nkeys.encode_seed(secrets.token_bytes(32), kind.value)
        return cls.from_seed(seed.decode())

    @classmethod
    def from_seed(cls, seed: str, kind: KeyKind | None = None) -> NKey:
        """The key pair of a seed; ``kind`` checks what the seed must be."""
        try:
            prefix, _ = nkeys.decode_seed(seed.strip().encode())
            pair = nkeys.from_seed(seed.strip().encode())
        except (nkeys.NkeysError, ValueError) as e:
            raise NKeyError(f"not an nkey seed: {e}") from e
        found = next((k for k in KeyKind if k.value == prefix), None)
        if found is None or (kind is not None and found is not kind):
            want = kind.name.lower() if kind else "operator, account or user"
            raise NKeyError(f"the seed is not an {want} seed")
        return cls(seed=seed.strip(), public_key=pair.public_key.decode(), kind=found)

    @staticmethod
    def kind_of(public_key: str) -> KeyKind | None:
        """The kind of a public key (prefix byte, 32 key bytes, CRC-16), or None when it is
        not a valid one."""
        try:
            raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
        except (ValueError, TypeError):
            return None
        if len(raw) != PUBLIC_KEY_BYTES or nkeys.crc16(raw[:-2]) != int.from_bytes(
                raw[-2:], "little"):
            return None
        return next((k for k in KeyKind if k.value == raw[0]), None)

    def sign(self, data: bytes) -> bytes:
        """The raw ed25519 signature of ``data``."""
        signature: bytes = nkeys.from_seed(self.seed.encode()).sign(data)
        return signature


def write_secret(path: Path, text: str) -> None:
    """Write a file only its owner may read (0600 from its creation, never wider)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
