"""Providers: one module per kind of infrastructure, each implementing :class:`Provider`."""

from hodei_provisioner.providers.base import Provider, ProviderError, Resource, WorkerSpec

__all__ = ["Provider", "ProviderError", "Resource", "WorkerSpec"]
