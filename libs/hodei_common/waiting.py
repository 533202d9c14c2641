"""Waiting in background loops without missing a stop."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_any(*events: asyncio.Event, within_s: float) -> None:
    """Return when any of ``events`` is set, or after ``within_s``."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def pause(stopping: asyncio.Event, delay_s: float) -> None:
    """Sleep ``delay_s``, cut short when ``stopping`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=delay_s)
