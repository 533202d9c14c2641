"""Running Hodei services inside a test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from hodei_common.runner import HodeiService


@asynccontextmanager
async def running(services: Sequence[HodeiService], start_s: float = 30.0) -> AsyncIterator[None]:
    """Run ``services`` until the block ends; a service that fails to start raises here, and
    one that died while the block ran raises when the block ends."""
    runs = [asyncio.create_task(s.run(), name=s.name) for s in services]
    ready: asyncio.Future[Any] = asyncio.ensure_future(
        asyncio.gather(*(s.ready.wait() for s in services)))
    waiters: list[asyncio.Future[Any]] = [ready, *runs]
    done, _ = await asyncio.wait(waiters, timeout=start_s, return_when=asyncio.FIRST_COMPLETED)
    try:
        for task in runs:
            if task in done:
                task.result()
        if ready not in done:
            raise TimeoutError(f"services not ready within {start_s:g}s")
        yield
    finally:
        ready.cancel()
        await asyncio.gather(*(s.stop() for s in services))
        await asyncio.gather(*runs)
