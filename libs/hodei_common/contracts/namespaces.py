"""Namespaces: who owns a job. A caller acts in one namespace, named by the API subject it
publishes to (``hodei.api.<namespace>.jobs.get``), so that NATS permissions on subjects
decide whose jobs it may see.

A namespace is a DNS label, so that it is one subject token (no ``.``, ``*`` or ``>``) and
can name a Kubernetes namespace or a label value as it is.
"""

from __future__ import annotations

import re

from hodei_common.errors import ValidationError

DEFAULT_NAMESPACE = "default"
MAX_NAMESPACE_CHARS = 63
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
NAMESPACE_RULE = (f"1 to {MAX_NAMESPACE_CHARS} lower-case letters, digits or '-', "
                  "starting and ending with a letter or digit")
_NAMESPACE = re.compile(DNS_LABEL)
_SHOWN_CHARS = MAX_NAMESPACE_CHARS + 1


def check_namespace(value: str, what: str = "namespace") -> str:
    """``value`` if it is a namespace (or a name by the same rule: ``what`` says which),
    else :class:`ValidationError` in one line."""
    if len(value) <= MAX_NAMESPACE_CHARS and _NAMESPACE.fullmatch(value):
        return value
    shown = value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "..."
    raise ValidationError(f"{what} {shown!r} is not valid: a {what} is {NAMESPACE_RULE}")
