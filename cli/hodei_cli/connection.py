"""How a CLI command reaches the platform: settings, one NATS connection, the API client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from pydantic import field_validator
from pydantic_core import PydanticCustomError

from hodei_common import messaging
from hodei_common.client import ApiClient
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE, check_namespace
from hodei_common.errors import UnavailableError, ValidationError
from hodei_common.natsauth.permissions import CLI_IDENTITY
from hodei_common.settings import Settings, load_settings


class CliSettings(Settings):
    """The CLI's settings: the platform's, and the namespace its job commands act in."""

    namespace: str = DEFAULT_NAMESPACE

    @field_validator("namespace", mode="after")
    @classmethod
    def _namespace(cls, value: str) -> str:
        try:
            return check_namespace(value)
        except ValidationError as e:  # pydantic's own wording would bury the rule
            raise PydanticCustomError("namespace", str(e)) from e


def cli_settings() -> CliSettings:
    return load_settings(CliSettings)


def acting_namespace(settings: CliSettings) -> str:
    """The namespace this CLI's job commands act in. HODEI_NAMESPACE for now; once users
    have credentials, the namespace their credentials allow."""
    return settings.namespace


T = TypeVar("T")


def call_api(call: Callable[[ApiClient], Awaitable[T]]) -> T:
    """Run one API call on a fresh connection, from synchronous CLI code."""

    async def go() -> T:
        async with api_client() as api:
            return await call(api)

    return asyncio.run(go())


@asynccontextmanager
async def api_client(settings: CliSettings | None = None) -> AsyncIterator[ApiClient]:
    """An API client on a fresh connection, acting in the CLI's namespace; one clear line
    when the platform is not there."""
    settings = settings or cli_settings()
    try:
        nc = await messaging.connect(settings, name=CLI_IDENTITY, initial_attempts=1)
    except UnavailableError as e:
        hint = "" if settings.nats_url else " (is `hodei dev up` still running?)"
        raise UnavailableError(f"{e}{hint}") from e
    try:
        yield ApiClient(nc, timeout_s=settings.request_timeout_s,
                        namespace=acting_namespace(settings))
    finally:
        await nc.close()
