"""The services ``hodei service NAME`` can run, and how each is built from the environment."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hodei_common.runner import HodeiService
from hodei_common.settings import Settings, load_settings

S = TypeVar("S", bound=Settings)


def _api(base: Settings | None) -> HodeiService:
    from hodei_api.config import ApiSettings
    from hodei_api.service import ApiService

    return ApiService(_settings(ApiSettings, base))


def _relay(base: Settings | None) -> HodeiService:
    from hodei_common.relay import RelayService, RelaySettings

    return RelayService(_settings(RelaySettings, base))


def _settings(cls: type[S], base: Settings | None) -> S:
    """The service's own settings from the environment, endpoints taken from ``base``."""
    if base is None:
        return load_settings(cls)
    return load_settings(cls, nats_url=base.nats_url, database_url=base.database_url,
                         home=base.home)


SERVICES: dict[str, Callable[[Settings | None], HodeiService]] = {
    "api": _api,
    "relay": _relay,
}
