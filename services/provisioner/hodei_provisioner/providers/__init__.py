"""Providers: one module per kind of infrastructure, each implementing :class:`Provider`."""

from hodei_provisioner.providers.base import (
    CannotStart,
    News,
    Provider,
    ProviderError,
    Resource,
    Verdict,
    WorkerSpec,
)

__all__ = ["CannotStart", "News", "Provider", "ProviderError", "Resource", "Verdict",
           "WorkerSpec"]
