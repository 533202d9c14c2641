"""Named SQL statements with named parameters, loaded from ``.sql`` files.

A file holds statements, each under a ``-- name: <name>`` line (the comment lines after it
say what it does). Parameters are written ``:name``; they become asyncpg's ``$n`` once, when
the file is loaded, and a call passes them by keyword: a missing or unknown one is an error
before anything is sent, so two parameters of one type can never be swapped silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from hodei_common.database import Conn

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
# A comment, a quoted literal or identifier, a cast (all skipped), or a parameter.
_TOKEN = re.compile(r"--[^\n]*|'(?:[^']|'')*'|\"[^\"]*\"|::|(?<![:\w]):([a-z_][a-z0-9_]*)")


@dataclass(frozen=True)
class Query:
    """One named statement: its SQL with ``$n`` and the parameter name of each ``$n``."""

    name: str
    sql: str
    params: tuple[str, ...]

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for ``values``; every parameter, and only those."""
        missing = [p for p in self.params if p not in values]
        unknown = sorted(set(values) - set(self.params))
        if missing or unknown:
            raise TypeError(f"statement {self.name}: missing parameters {missing}, "
                            f"unknown parameters {unknown}")
        return [values[p] for p in self.params]

    async def fetch(self, conn: Conn, **values: Any) -> list[asyncpg.Record]:
        return await conn.fetch(self.sql, *self.args(values))

    async def fetchrow(self, conn: Conn, **values: Any) -> asyncpg.Record | None:
        return await conn.fetchrow(self.sql, *self.args(values))

    async def fetchval(self, conn: Conn, **values: Any) -> Any:
        return await conn.fetchval(self.sql, *self.args(values))

    async def execute(self, conn: Conn, **values: Any) -> str:
        return await conn.execute(self.sql, *self.args(values))


def parse(text: str, origin: str = "<sql>") -> dict[str, Query]:
    """Every statement of a file's text, by name."""
    marks = list(_NAME_LINE.finditer(text))
    queries: dict[str, Query] = {}
    for mark, after in zip(marks, [*marks[1:], None], strict=True):
        name = mark.group(1)
        body = text[mark.end():after.start() if after else len(text)].strip()
        if name in queries:
            raise ValueError(f"{origin}: statement {name} is defined twice")
        if not body:
            raise ValueError(f"{origin}: statement {name} is empty")
        queries[name] = _compile(name, body)
    return queries


def _compile(name: str, body: str) -> Query:
    params: list[str] = []

    def number(match: re.Match[str]) -> str:
        param = match.group(1)
        if param is None:
            return match.group(0)
        if param not in params:
            params.append(param)
        return f"${params.index(param) + 1}"

    return Query(name, _TOKEN.sub(number, body), tuple(params))


def load(path: Path) -> dict[str, Query]:
    """The statements of one ``.sql`` file."""
    return parse(path.read_text(), path.name)
