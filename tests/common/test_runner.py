"""The service lifecycle: run/stop contract, loud loop deaths, drain with a grace period."""

from __future__ import annotations

import asyncio
import gc
from typing import ClassVar

import pytest

from hodei_common.errors import SchemaError
from hodei_common.runner import HodeiService, Loop, run_until_signalled
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_common.testing.plugin import as_test_user

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


class Probe(HodeiService):
    """A service whose loops do what the test asks."""

    name: ClassVar[str] = "probe"

    def __init__(self, settings: Settings, *, fail: bool = False, stubborn: bool = False):
        super().__init__(settings)
        self.fail = fail
        self.stubborn = stubborn
        self.drained_cleanly = False
        self.cancelled = False
        self.set_up = asyncio.Event()
        self.set_up.set()

    async def setup(self) -> None:
        await self.set_up.wait()

    def loops(self) -> list[Loop]:
        return [self.work]

    async def work(self) -> None:
        if self.fail:
            raise ValueError("loop blew up")
        if self.stubborn:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        await self.stopping.wait()
        self.drained_cleanly = True


async def test_stop_before_run_makes_run_return_at_once(settings: Settings) -> None:
    service = Probe(as_test_user(settings))
    await service.stop()
    await asyncio.wait_for(service.run(), 5)
    assert not service.ready.is_set()


async def test_stop_is_idempotent_and_waits_for_the_drain(settings: Settings) -> None:
    service = Probe(as_test_user(settings))
    run = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), 30)
    await asyncio.gather(service.stop(), service.stop())
    assert run.done()
    assert service.drained_cleanly
    assert service.nc.is_closed
    await service.stop()


async def test_a_dying_loop_takes_the_service_down_with_its_error(settings: Settings) -> None:
    service = Probe(as_test_user(settings), fail=True)
    with pytest.raises(ValueError, match="loop blew up"):
        await asyncio.wait_for(service.run(), 30)
    assert service.nc.is_closed


async def test_a_loop_ignoring_stop_is_cancelled_after_the_grace_period(settings: Settings) -> None:
    service = Probe(as_test_user(settings).model_copy(update={"drain_grace_s": 0.2}), stubborn=True)
    run = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), 30)
    await asyncio.wait_for(service.stop(), 10)
    await run
    assert service.cancelled


async def test_a_service_refuses_an_unmigrated_database_in_one_line(
    nats_url: str, empty_database_url: str
) -> None:
    service = Probe(Settings(nats_url=nats_url, database_url=empty_database_url))
    with pytest.raises(SchemaError) as info:
        await asyncio.wait_for(service.run(), 30)
    assert "hodei migrate" in str(info.value)
    assert "\n" not in str(info.value)


async def test_services_run_together_settle_the_heap_once_all_are_ready(
    settings: Settings,
) -> None:
    """What the process made to start is frozen out of the collector's generations (a full
    collection of it held the platform's loop ~100 ms), and not before every service is up."""
    first, second = Probe(as_test_user(settings)), Probe(as_test_user(settings))
    second.set_up.clear()
    gc.unfreeze()
    run = asyncio.create_task(run_until_signalled(first, second))
    try:
        await asyncio.wait_for(first.ready.wait(), 30)
        await asyncio.sleep(0.2)
        assert gc.get_freeze_count() == 0  # the second is not ready yet
        second.set_up.set()
        await asyncio.wait_for(second.ready.wait(), 30)
        await assert_eventually(lambda: gc.get_freeze_count() > 0, within_s=5,
                                message="the heap was not settled")
    finally:
        gc.unfreeze()  # not for the rest of this test process
        await first.stop()
        await second.stop()
        await asyncio.wait_for(run, 30)
