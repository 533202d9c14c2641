"""The service lifecycle every Hodei service shares.

``run()`` blocks until stopped and re-raises a fatal error; ``stop()`` is idempotent, safe
before start, and waits. Draining goes in order: stop fetching, wait for in-flight work up to
the grace period, cancel what is left, drain NATS, close the pool. Background loops live in a
TaskGroup, so a loop that dies takes the service down loudly instead of leaving it half alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, TypeVar

import asyncpg
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.micro import add_service
from nats.micro.service import Service as MicroService

from hodei_common import (
    database,
    eventloop,
    heap,
    logconfig,
    messaging,
    platform_settings,
    probes,
    tracing,
)
from hodei_common.consumer import ConsumerSpec
from hodei_common.contracts import subjects
from hodei_common.errors import HodeiError
from hodei_common.logconfig import configure_logging
from hodei_common.metrics import Metrics
from hodei_common.platform_settings import PlatformSettings
from hodei_common.settings import Settings, load_settings
from hodei_migrations import check_schema

log = logging.getLogger(__name__)

__all__ = ["HodeiService", "Loop", "configure_logging", "main_for", "run_probed",
           "run_until_signalled", "share_metrics"]

VERSION = "0.1.0"

Loop = Callable[[], Awaitable[None]]
S = TypeVar("S", bound=Settings)


class HodeiService:
    """Base of every service: connects, checks the schema, runs loops, drains in order."""

    name: ClassVar[str] = "service"
    description: ClassVar[str] = ""
    # The durable consumers the service's loops read: ready once they are bound, and their
    # backlogs are its ``hodei_consumer_pending``.
    consumers: ClassVar[tuple[ConsumerSpec, ...]] = ()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._started = False
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._pool: asyncpg.Pool | None = None
        self._micro: MicroService | None = None
        self._platform: PlatformSettings | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()
        # This process's metrics; services run together share one (share_metrics).
        self.metrics = Metrics()

    # --- resources, valid once run() has started them ------------------------------------
    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "service not started"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "service not started"
        return self._js

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "service not started"
        return self._pool

    @property
    def platform(self) -> PlatformSettings:
        """The settings every service shares, as stored in PostgreSQL; they win over this
        service's own (:mod:`hodei_common.platform_settings`)."""
        assert self._platform is not None, "service not started"
        return self._platform

    @property
    def micro(self) -> MicroService:
        assert self._micro is not None, "service not started"
        return self._micro

    # --- what a service overrides --------------------------------------------------------
    async def setup(self) -> None:
        """Declare subscriptions and endpoints; runs after connections are open."""

    def loops(self) -> list[Loop]:
        """Background loops; each watches ``self.stopping`` and returns once it is set."""
        return []

    async def stop_fetching(self) -> None:
        """First drain step: take no new work. The micro endpoints are already stopped."""

    def wind_down(self) -> None:
        """The whole platform is about to stop: start nothing new (e.g. no new workers), but
        keep serving what is under way. Called before the platform's shutdown steps."""

    async def refresh_metrics(self) -> None:
        """Set the gauges this service owns, at scrape time: by default the backlog of each
        of its consumers (one consumer info each, per scrape, not per message)."""
        if self._js is None or not self.nc.is_connected:
            return
        for spec in self.consumers:
            info = await self.js.consumer_info(spec.stream, spec.durable)
            self.metrics.consumer_pending.labels(consumer_label(spec)).set(
                info.num_pending or 0)

    # --- probes (hodei_common.probes) ----------------------------------------------------
    def alive(self) -> bool:
        """False once the service has ended, or one of its loops has before a stop."""
        if self._done.is_set():
            return False
        return self.stopping.is_set() or not any(task.done() for task in self._tasks)

    async def readiness(self) -> str | None:
        """None when connected to NATS and PostgreSQL, on the current schema, with every
        consumer bound; else why not, in one line."""
        if not self.ready.is_set() or self._nc is None or self._pool is None:
            return "starting"
        if self.stopping.is_set():
            return "stopping"
        if not self._nc.is_connected:
            return "NATS is not connected"
        try:
            async with self._pool.acquire() as conn:
                await check_schema(conn)
        except HodeiError as e:
            return str(e)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            return f"PostgreSQL is unavailable: {type(e).__name__}"
        for spec in self.consumers:
            try:
                await self.js.consumer_info(spec.stream, spec.durable)
            except NatsError as e:
                return f"consumer {consumer_label(spec)} is not bound: {type(e).__name__}"
        return None

    # --- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        """Run until :meth:`stop`; re-raise whatever killed the service."""
        if self._started:
            raise RuntimeError(f"{self.name} service already ran")
        self._started = True
        if self.stopping.is_set():
            self._done.set()
            return
        tracing.use_service(self.name)
        # Every record of this service's tasks names it, also beside others in one process.
        named = logconfig.SERVICE.set(subjects.service_name(self.name))
        try:
            await self._open()
            await self._serve()
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:
            await self._close()
            self._done.set()
            logconfig.SERVICE.reset(named)

    async def stop(self) -> None:
        """Ask the service to drain and wait until it has; a no-op when already stopped."""
        self.stopping.set()
        if self._started:
            await self._done.wait()

    async def _open(self) -> None:
        self._pool = await database.create_pool(self.settings)
        async with self._pool.acquire() as conn:
            await check_schema(conn)
            self._platform = await platform_settings.load(conn)
        if (ignored := platform_settings.ignored(self.settings, self._platform)) is not None:
            log.warning("%s: %s", self.name, ignored)
        self._nc = await messaging.connect(self.settings, name=subjects.service_name(self.name))
        self._js = self._nc.jetstream()
        await messaging.ensure_streams(
            self._js, messaging.stream_configs(self.platform.logs_max_age_s))
        self._micro = await add_service(
            self._nc,
            name=subjects.service_name(self.name),
            version=VERSION,
            description=self.description or f"Hodei {self.name} service",
        )
        await self.setup()
        # Ready means answering: the server has the subscriptions setup made, so a request
        # sent from another connection right after finds its responder.
        await self._nc.flush()

    async def _serve(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tasks = self._tasks = [
                tg.create_task(self._guard(loop), name=f"{self.name}:{loop.__name__}")
                for loop in self.loops()]
            self.ready.set()
            log.info("%s service started", self.name)
            await self.stopping.wait()
            log.info("%s service draining", self.name)
            if self._micro is not None:
                await self._micro.stop()
            await self.stop_fetching()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_grace_s)
                for task in pending:
                    log.warning("%s: %s did not finish in time; cancelling", self.name,
                                task.get_name())
                    task.cancel()

    async def _guard(self, loop: Loop) -> None:
        await loop()
        if not self.stopping.is_set():
            raise RuntimeError(f"{self.name}: background loop {loop.__name__} ended on its own")

    async def _close(self) -> None:
        if self._micro is not None and not self._micro.stopped.is_set():
            with contextlib.suppress(Exception):
                await self._micro.stop()
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.drain(), timeout=self.settings.drain_grace_s)
            except (TimeoutError, OSError, NatsError) as e:
                # NatsError: the server went away first (reconnecting); there is nothing
                # left to drain.
                log.warning("%s: NATS drain did not finish (%s); closing", self.name,
                            e or type(e).__name__)
                # RuntimeError: uvloop refuses to write to a transport the server closed.
                with contextlib.suppress(OSError, NatsError, RuntimeError):
                    await self._nc.close()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=self.settings.drain_grace_s)
            except TimeoutError:
                self._pool.terminate()
        log.info("%s service stopped", self.name)


def consumer_label(spec: ConsumerSpec) -> str:
    """``STREAM/durable``: the scheduler's dispatch durable reads two streams."""
    return f"{spec.stream}/{spec.durable}"


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


async def run_until_signalled(
    *services: HodeiService, before_stop: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Run services together until SIGINT/SIGTERM, then stop them all; a fatal error in one
    stops the others and is re-raised. ``before_stop`` runs on the signal, while every
    service still works (a second signal skips it)."""
    loop = asyncio.get_running_loop()
    wind_down: list[asyncio.Task[None]] = []

    def request_stop() -> None:
        for service in services:
            service.stopping.set()

    async def stop_after_hook(hook: Callable[[], Awaitable[None]]) -> None:
        try:
            await hook()
        except HodeiError as e:  # a server already gone: one line, not a traceback
            log.warning("shutdown step failed (%s); stopping anyway", e)
        except Exception:
            log.exception("shutdown step failed; stopping anyway")
        request_stop()

    def on_signal() -> None:
        if before_stop is None or wind_down:
            request_stop()
        else:
            wind_down.append(asyncio.create_task(stop_after_hook(before_stop)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    settling = asyncio.create_task(_settle_when_ready(services))
    try:
        await _run_all(services, request_stop)
    finally:
        settling.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _settle_when_ready(services: Sequence[HodeiService]) -> None:
    """Once every service is ready, take what the process made to start out of the
    collector's way (see :mod:`hodei_common.heap`)."""
    for service in services:
        await service.ready.wait()
    heap.settle()


async def _run_all(services: tuple[HodeiService, ...], request_stop: Callable[[], None]) -> None:
    """Run every service; the first to die stops the rest, and its error is re-raised."""
    runs = [asyncio.create_task(s.run(), name=s.name) for s in services]
    first_error: BaseException | None = None
    for task in asyncio.as_completed(runs):
        try:
            await task
        except Exception as e:
            if first_error is None:
                first_error = e
            request_stop()
    if first_error is not None:
        raise first_error


def share_metrics(services: Sequence[HodeiService]) -> Metrics:
    """One registry for services run in one process, so that each metric is registered
    once and each event counted once, by the service that handles it."""
    metrics = Metrics()
    for service in services:
        service.metrics = metrics
    return metrics


async def run_probed(services: Sequence[HodeiService], metrics_addr: str | None) -> None:
    """Run ``services`` until signalled, with the probes on ``metrics_addr`` (None: none)."""
    metrics = share_metrics(services)
    if metrics_addr is None:
        await run_until_signalled(*services)
        return
    async with probes.serving(metrics_addr, services, metrics) as url:
        log.info("metrics and probes on %s", url)
        await run_until_signalled(*services)


def main_for(settings_cls: type[S], build: Callable[[S], list[HodeiService]]) -> None:
    """Entry point body for ``python -m <service>``: settings, logging, run, one-line errors."""
    try:
        settings = load_settings(settings_cls)
        configure_logging(settings.log_level)
        eventloop.run(run_probed(build(settings), settings.metrics_addr))
    except HodeiError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        tracing.shutdown_tracing()
