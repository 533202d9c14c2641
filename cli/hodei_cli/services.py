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


def _scheduler(base: Settings | None) -> HodeiService:
    from hodei_scheduler.config import SchedulerSettings
    from hodei_scheduler.service import SchedulerService

    return SchedulerService(_settings(SchedulerSettings, base))


def _provisioner(base: Settings | None) -> HodeiService:
    from hodei_provisioner.config import ProvisionerSettings
    from hodei_provisioner.service import ProvisionerService

    return ProvisionerService(_settings(ProvisionerSettings, base))


def _logs(base: Settings | None) -> HodeiService:
    from hodei_logs.config import LogsSettings
    from hodei_logs.service import LogsService

    return LogsService(_settings(LogsSettings, base))


def _supervisor(base: Settings | None) -> HodeiService:
    from hodei_supervisor.config import SupervisorSettings
    from hodei_supervisor.service import SupervisorService

    return SupervisorService(_settings(SupervisorSettings, base))


SERVICES: dict[str, Callable[[Settings | None], HodeiService]] = {
    "api": _api,
    "relay": _relay,
    "scheduler": _scheduler,
    "provisioner": _provisioner,
    "logs": _logs,
    "supervisor": _supervisor,
}
