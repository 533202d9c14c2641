"""One-time bootstrap tokens: made here, handed to one agent, stored only as a sha256 digest."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_BYTES = 32


def new_token() -> str:
    """A fresh token (URL-safe, 256 bits of randomness). Never log or store it."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def digest(token: str) -> bytes:
    """The sha256 of a token: the only form of it the database ever sees."""
    return hashlib.sha256(token.encode()).digest()
