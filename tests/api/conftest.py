"""Fixtures of the API tests: a running API service and a client talking to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS

from hodei_api.config import ApiSettings
from hodei_api.service import ApiService
from hodei_common.client import ApiClient
from hodei_common.settings import Settings


@pytest.fixture
def api_settings(settings: Settings) -> ApiSettings:
    """The test's settings as the API service takes them."""
    return ApiSettings(**settings.model_dump())


@pytest.fixture
async def api(api_settings: ApiSettings) -> AsyncIterator[ApiService]:
    """A running API service, stopped (and its failure re-raised) after the test."""
    service = ApiService(api_settings)
    task = asyncio.create_task(service.run())
    ready = asyncio.create_task(service.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():  # run() ended before the service was ready: show why
        ready.cancel()
        await task
        pytest.fail("the api service stopped before it was ready")
    try:
        yield service
    finally:
        await service.stop()
        await task


@pytest.fixture
def client(api: ApiService, nc: NATS) -> ApiClient:
    """A client of the running API service."""
    return ApiClient(nc, timeout_s=5.0)
