"""Numbered SQL migrations and their runner."""

from hodei_migrations.runner import (
    Migration,
    applied_version,
    check_schema,
    load_migrations,
    migrate,
    required_version,
)

__all__ = [
    "Migration",
    "applied_version",
    "check_schema",
    "load_migrations",
    "migrate",
    "required_version",
]
