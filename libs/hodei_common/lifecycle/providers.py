"""The one change of a provider's configuration (``sql/providers.sql``), with its event."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from hodei_common.contracts.workers import ProviderUpdated
from hodei_common.database import Conn
from hodei_common.lifecycle import SQL_DIR, events, queries
from hodei_common.lifecycle.events import Emit
from hodei_common.lifecycle.transitions import PROVIDERS

SQL = queries.load(SQL_DIR / "providers.sql")


async def update(conn: Conn, provider_id: UUID, name: str, *, enabled: bool | None,
                 worker_mode: str | None, max_workers: int | None, min_idle: int | None,
                 image: str | None, settings: dict[str, Any], changes: dict[str, object],
                 actor: str) -> asyncpg.Record | None:
    """Change the provider named ``name`` (its new row); None when min_idle would exceed
    max_workers. ``changes`` (what was asked) is what ProviderUpdated says."""
    t = PROVIDERS["update"]
    updated = events.new(ProviderUpdated, actor=actor, job=None, provider=name,
                         changes=changes)
    return await SQL["update"].fetchrow(
        conn, name=name, enabled=enabled, worker_mode=worker_mode, max_workers=max_workers,
        min_idle=min_idle, image=image, settings=settings,
        events=events.encode([Emit(t, updated, aggregate=provider_id)]))
