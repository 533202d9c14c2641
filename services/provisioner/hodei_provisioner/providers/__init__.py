"""Providers: one module per kind of infrastructure, each implementing :class:`Provider`."""

from hodei_provisioner.providers.base import Provider, ProviderError, WorkerSpec

__all__ = ["Provider", "ProviderError", "WorkerSpec"]
