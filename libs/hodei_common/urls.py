"""URLs as logs and messages may show them."""

from __future__ import annotations


def redact_url(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``: for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return url
    return f"{scheme}://{user}:***@{host}{slash}{path}"
