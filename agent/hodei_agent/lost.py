"""An agent without its platform: NATS unreachable past a limit, or a stop it cannot report.

nats-py reconnects forever and every report waits for JetStream's ack, so an agent whose
platform is gone (``hodei dev up`` killed, a NATS outage that does not end) would run its job
to the end and then retry its reports, and a SIGTERM would only start that wait. These are
the agent's bounds: it ends once NATS has been unreachable for ``platform_lost_s``, and a
stopped agent gives its last reports a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from nats.aio.client import Client as NATS

from hodei_common.errors import HodeiError

log = logging.getLogger(__name__)


class PlatformLost(HodeiError):
    """NATS stayed unreachable past the limit, or a stopped agent could not report its job."""


async def watch_platform(nc: NATS, limit_s: float, on_lost: Callable[[str], None]) -> None:
    """Call ``on_lost(why)`` once NATS has been unreachable for ``limit_s``, then return.

    A shorter outage (a restarted nats-server) goes unnoticed but for the client's own
    reconnect logs.
    """
    loop = asyncio.get_running_loop()
    poll_s = min(1.0, limit_s / 4)
    since: float | None = None
    while True:
        await asyncio.sleep(poll_s)
        if nc.is_connected:
            if since is not None:
                log.info("nats: reachable again after %.1fs", loop.time() - since)
            since = None
            continue
        now = loop.time()
        if since is None:
            since = now
        elif now - since >= limit_s:
            on_lost(f"NATS unreachable for {limit_s:g}s")
            return


class StopBound:
    """The time a stopped agent has left for its job (the kill grace) and its last reports.

    :meth:`arm` (on a stop) starts the clock; past it, the work inside :meth:`applied` is
    cancelled (a job still running is killed with SIGKILL, reports are abandoned) and
    :class:`PlatformLost` raised with ``why()``.
    """

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self._armed = False
        self._timeout: asyncio.Timeout | None = None

    def arm(self) -> None:
        self._armed = True
        if self._timeout is not None and self._timeout.when() is None:
            self._timeout.reschedule(asyncio.get_running_loop().time() + self.bound_s)

    @contextlib.asynccontextmanager
    async def applied(self, why: Callable[[], str]) -> AsyncIterator[None]:
        timeout = asyncio.timeout(None)
        try:
            async with timeout:
                self._timeout = timeout
                if self._armed:
                    self.arm()
                yield
        except TimeoutError:
            if not timeout.expired():
                raise
            raise PlatformLost(why()) from None
        finally:
            self._timeout = None
