"""The migration runner: numbered SQL files, a schema_migrations table with checksums.

Applying twice is a no-op, an applied file that was edited is an error, and concurrent
runners are serialised by an advisory lock. After the numbered files, the lifecycle's
routines (database functions that every state change calls, kept next to the statements
that call them) are created again whenever their file changed: they are code, not schema
history, so they are replaced rather than migrated. Services call :func:`check_schema` at start so
an older schema stops them with one clear line instead of a later "column does not exist".
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from hodei_common.database import LOCK_CLASS, LOCK_MIGRATIONS, Conn
from hodei_common.errors import MigrationError, SchemaError
from hodei_common.lifecycle import ROUTINES_SQL

SQL_DIR = Path(__file__).with_name("sql")
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
)
"""


_ROUTINES = "lifecycle"


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return _checksum(self.sql)

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def load_migrations(directory: Path = SQL_DIR) -> list[Migration]:
    """Every migration file in ``directory``, by version; a malformed name is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


def required_version(directory: Path = SQL_DIR) -> int:
    """The schema version this build needs."""
    migrations = load_migrations(directory)
    return migrations[-1].version if migrations else 0


async def applied_version(conn: Conn) -> int | None:
    """The highest applied version, or None when the database has no Hodei schema."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return None
    version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    return int(version) if version is not None else None


async def migrate(conn: Conn, directory: Path = SQL_DIR) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; return those applied."""
    migrations = load_migrations(directory)
    await conn.execute("SELECT pg_advisory_lock($1, $2)", LOCK_CLASS, LOCK_MIGRATIONS)
    try:
        await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {r["version"]: r for r in rows}
        for m in migrations:
            row = applied.get(m.version)
            if row is not None and row["checksum"] != m.checksum:
                raise MigrationError(
                    f"migration {m.label} was changed after it was applied "
                    f"(checksum {row['checksum'][:12]} in the database, {m.checksum[:12]} on "
                    f"disk); add a new migration instead of editing an applied one"
                )
        done: list[Migration] = []
        for m in migrations:
            if m.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
            except asyncpg.PostgresError as e:
                raise MigrationError(f"migration {m.label} failed: {e}") from e
            done.append(m)
        await _replace_routines(conn)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, LOCK_MIGRATIONS)


async def _routines_checksum(conn: Conn) -> str | None:
    if not await conn.fetchval("SELECT to_regclass('schema_routines') IS NOT NULL"):
        return None
    checksum: str | None = await conn.fetchval(
        "SELECT checksum FROM schema_routines WHERE name = $1", _ROUTINES)
    return checksum


async def _replace_routines(conn: Conn) -> None:
    """Create the lifecycle's routines again when their file differs from those applied."""
    sql = ROUTINES_SQL.read_text()
    if await _routines_checksum(conn) == _checksum(sql):
        return
    try:
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_routines (name, checksum) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, "
                "applied_at = now()", _ROUTINES, _checksum(sql))
    except asyncpg.PostgresError as e:
        raise MigrationError(f"the lifecycle routines could not be created: {e}") from e


async def check_schema(conn: Conn, directory: Path = SQL_DIR) -> int:
    """Refuse to run against a schema older than this build; return the applied version."""
    needed = required_version(directory)
    current = await applied_version(conn)
    if current is None:
        raise SchemaError("the database has no Hodei schema: run `hodei migrate` first")
    if current < needed:
        raise SchemaError(
            f"the database schema is at version {current} but this build needs {needed}: "
            f"run `hodei migrate` first"
        )
    if await _routines_checksum(conn) != _checksum(ROUTINES_SQL.read_text()):
        raise SchemaError("the database's lifecycle routines differ from this build's: run "
                          "`hodei migrate` first")
    return current
