"""The services ``hodei service NAME`` can run, and how each is built from the environment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hodei_common.runner import HodeiService
from hodei_common.settings import Settings, load_settings

S = TypeVar("S", bound=Settings)


def _api(base: Settings | None, **overrides: Any) -> HodeiService:
    from hodei_api.config import ApiSettings
    from hodei_api.service import ApiService

    return ApiService(_settings(ApiSettings, base, overrides))


def _relay(base: Settings | None, **overrides: Any) -> HodeiService:
    from hodei_common.relay import RelayService, RelaySettings

    return RelayService(_settings(RelaySettings, base, overrides))


def _settings(cls: type[S], base: Settings | None, overrides: dict[str, Any]) -> S:
    """The service's own settings from the environment, endpoints and credentials taken
    from ``base``, then ``overrides``."""
    if base is None:
        return load_settings(cls, **overrides)
    return load_settings(cls, nats_url=base.nats_url, database_url=base.database_url,
                         home=base.home, creds=base.creds, creds_dir=base.creds_dir,
                         **overrides)


def _scheduler(base: Settings | None, **overrides: Any) -> HodeiService:
    from hodei_scheduler.config import SchedulerSettings
    from hodei_scheduler.service import SchedulerService

    return SchedulerService(_settings(SchedulerSettings, base, overrides))


def _provisioner(base: Settings | None, **overrides: Any) -> HodeiService:
    from hodei_provisioner.config import ProvisionerSettings
    from hodei_provisioner.service import ProvisionerService

    return ProvisionerService(_settings(ProvisionerSettings, base, overrides))


def _logs(base: Settings | None, **overrides: Any) -> HodeiService:
    from hodei_logs.config import LogsSettings
    from hodei_logs.service import LogsService

    return LogsService(_settings(LogsSettings, base, overrides))


def _supervisor(base: Settings | None, **overrides: Any) -> HodeiService:
    from hodei_supervisor.config import SupervisorSettings
    from hodei_supervisor.service import SupervisorService

    return SupervisorService(_settings(SupervisorSettings, base, overrides))


SERVICES: dict[str, Callable[..., HodeiService]] = {
    "api": _api,
    "relay": _relay,
    "scheduler": _scheduler,
    "provisioner": _provisioner,
    "logs": _logs,
    "supervisor": _supervisor,
}
