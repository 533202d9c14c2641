"""Rendering for people (aligned tables, key/value blocks) and for scripts (JSON)."""

from __future__ import annotations

import enum
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import typer


class Output(enum.StrEnum):
    """``--output``: a table for people or JSON for scripts."""

    TABLE = "table"
    JSON = "json"


OutputOption = typer.Option(
    Output.TABLE, "--output", "-o", help="table for people, json for scripts",
    case_sensitive=False,
)


def emit_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def cell(value: Any) -> str:
    """One value as a table cell: times in local ISO form, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print an aligned table; long cells are cut so a row stays one line."""
    text_rows = [[_clip(cell(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    typer.echo(line.format(*headers).rstrip())
    for row in text_rows:
        typer.echo(line.format(*row).rstrip())


def details(pairs: Sequence[tuple[str, Any]]) -> None:
    """Print ``key: value`` lines, keys aligned."""
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        typer.echo(f"{key + ':':<{width + 1}} {cell(value)}")


def age(when: datetime | None) -> str:
    """How long ago, for people: '3s ago', 'never'."""
    if when is None:
        return "never"
    seconds = (datetime.now(UTC) - when).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _clip(text: str, limit: int = 60) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"
