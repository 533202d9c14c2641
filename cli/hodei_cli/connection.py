"""How a CLI command reaches the platform: settings, one NATS connection, the API client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from hodei_common import messaging
from hodei_common.client import ApiClient
from hodei_common.errors import UnavailableError
from hodei_common.natsauth.permissions import CLI_IDENTITY
from hodei_common.settings import Settings, load_settings


def cli_settings() -> Settings:
    return load_settings(Settings)


T = TypeVar("T")


def call_api(call: Callable[[ApiClient], Awaitable[T]]) -> T:
    """Run one API call on a fresh connection, from synchronous CLI code."""

    async def go() -> T:
        async with api_client() as api:
            return await call(api)

    return asyncio.run(go())


@asynccontextmanager
async def api_client(settings: Settings | None = None) -> AsyncIterator[ApiClient]:
    """An API client on a fresh connection; one clear line when the platform is not there."""
    settings = settings or cli_settings()
    try:
        nc = await messaging.connect(settings, name=CLI_IDENTITY, initial_attempts=1)
    except UnavailableError as e:
        hint = "" if settings.nats_url else " (is `hodei dev up` still running?)"
        raise UnavailableError(f"{e}{hint}") from e
    try:
        yield ApiClient(nc, timeout_s=settings.request_timeout_s)
    finally:
        await nc.close()
