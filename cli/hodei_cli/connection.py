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
from hodei_common.errors import (
    ConfigError,
    PermissionDeniedError,
    UnavailableError,
    ValidationError,
)
from hodei_common.natsauth import NKeyError, jwt
from hodei_common.natsauth.permissions import CLI_IDENTITY, Scope
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


def credentials_scope(settings: Settings) -> Scope | None:
    """Where the CLI's NATS credentials let it act (their JWT's tags); None without
    credentials (a NATS that asks for none)."""
    path = settings.resolved_creds(CLI_IDENTITY)
    if path is None:
        return None
    try:
        claims = jwt.decode(jwt.creds_user_jwt(path.read_text()))
    except (OSError, NKeyError) as e:
        raise ConfigError(f"cannot use the NATS credentials {path}: {e}") from e
    return Scope.of_tags(claims["nats"].get("tags") or [])


def acting_namespace(settings: CliSettings) -> str:
    """The namespace this CLI's job commands act in: its credentials' (an admin's may name
    another with HODEI_NAMESPACE); without credentials, HODEI_NAMESPACE."""
    chosen = "namespace" in settings.model_fields_set
    scope = credentials_scope(settings)
    if scope is None:
        return settings.namespace
    if scope.admin:
        return settings.namespace if chosen else scope.namespace
    if chosen and settings.namespace != scope.namespace:
        raise PermissionDeniedError(f"your credentials are for namespace "
                                    f"{scope.namespace!r}; they cannot act in "
                                    f"{settings.namespace!r}")
    return scope.namespace


def require_admin(settings: Settings) -> None:
    """Refuse at once, in one line, what only an admin may do (the server would refuse it
    anyway, but only as a request that is never answered)."""
    scope = credentials_scope(settings)
    if scope is not None and not scope.admin:
        raise PermissionDeniedError(
            "workers and providers are for admins; these credentials are a user's of "
            f"namespace {scope.namespace!r}")


T = TypeVar("T")


def call_admin_api(call: Callable[[ApiClient], Awaitable[T]]) -> T:
    """Run one admin API call (workers, providers): refused at once without an admin's
    credentials."""
    require_admin(cli_settings())
    return call_api(call)


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
