"""A NATS message for people, as ``nats sub`` prints it: subject, headers, payload.

Payloads come from whoever could publish on the subject, a job's own output included, so
nothing reaches the terminal unescaped: control characters (an escape sequence would
redraw the screen) are shown as ``\\xNN``, bytes that are no UTF-8 as ``\\xNN`` too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# C0 controls but tab and newline, DEL and the C1 controls (CSI is one).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# The same inside JSON text, where json.dumps already escaped C0 but leaves DEL and C1.
_JSON_CONTROL = re.compile("[\x7f-\x9f]")
NO_PAYLOAD = "(no payload)"


def safe_text(text: str, *, keep_newlines: bool = True) -> str:
    """``text`` with every control character shown as an escape."""
    shown = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return shown if keep_newlines else shown.replace("\n", "\\n").replace("\t", "\\t")


def payload_text(data: bytes) -> str:
    """The payload: pretty JSON when it is JSON, else its text, escaped."""
    if not data:
        return NO_PAYLOAD
    text = data.decode("utf-8", errors="backslashreplace")
    try:
        value = json.loads(text)
    except ValueError:
        return safe_text(text)
    return _JSON_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", pretty_json(value))


def pretty_json(value: Any, indent: str = "") -> str:
    """JSON indented by two spaces, but a list of plain values on one line: a log line
    (``[1, "out", 1736933412.5, "text"]``) reads as one."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        fields = [f"{inner}{_scalar(k)}: {pretty_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(fields) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        items = [f"{inner}{pretty_json(v, inner)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{indent}]"
    return _scalar(value)


def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def decoded(data: bytes) -> Any:
    """The payload as JSON, or None when it is not JSON."""
    try:
        return json.loads(data)
    except ValueError:
        return None


def block(number: int, subject: str, headers: Mapping[str, str] | None, data: bytes,
          stored: tuple[str, int, datetime] | None = None) -> str:
    """One message, ending with a blank line: ``[#n] Received on "subject"`` (and where a
    replayed message is stored), its headers one a line, a blank line, its payload."""
    where = "" if stored is None else f" ({stored[0]} #{stored[1]}, {_utc(stored[2])})"
    lines = [f'[#{number}] Received on "{safe_text(subject, keep_newlines=False)}"{where}']
    lines += [f"{safe_text(k, keep_newlines=False)}: {safe_text(v, keep_newlines=False)}"
              for k, v in (headers or {}).items()]
    return "\n".join([*lines, "", payload_text(data), "", ""])


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
