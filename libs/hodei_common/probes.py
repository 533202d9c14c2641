"""The metrics address: ``/metrics``, ``/healthz`` and ``/readyz`` for Prometheus and probes.

A few dozen lines of asyncio serve these three GET paths; a web framework would be a runtime
dependency for this alone, and prometheus_client's own server runs in a thread, where it
could not ask the services (asyncio objects) anything. One server per process: the embedded
platform's covers all its services.

- ``/healthz``: 200 while every service's loops run (the answer itself shows the event
  loop does); 503 once one has ended.
- ``/readyz``: 200 when every service is connected to NATS and PostgreSQL, the schema is
  current and its consumers are bound; else 503 with the first reason, one line.
- ``/metrics``: the gauges refreshed by their owners (a bounded wait), then the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from hodei_common.errors import ConfigError
from hodei_common.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["Probed", "parse_addr", "serving"]

# A probe or a scrape answers within this, whatever a server behind it does.
CHECK_TIMEOUT_S = 2.0
MAX_REQUEST_BYTES = 8192
TEXT = "text/plain; charset=utf-8"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


class Probed(Protocol):
    """What the server asks of a service (:class:`hodei_common.runner.HodeiService`)."""

    @property
    def name(self) -> str:
        """The service's name, for a reason line."""

    def alive(self) -> bool:
        """False once the service or one of its loops has ended."""

    async def readiness(self) -> str | None:
        """None when ready to work, else why not (one line)."""

    async def refresh_metrics(self) -> None:
        """Set the gauges this service owns."""


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6; port 0: any free port) as a pair; a
    ConfigError line otherwise."""
    host, sep, port = addr.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"HODEI_METRICS_ADDR must be host:port (like 0.0.0.0:9464), "
                          f"not {addr!r}")
    return host, int(port)


class ProbeServer:
    """Answers the three paths for ``services``, from ``metrics``."""

    def __init__(self, services: Sequence[Probed], metrics: Metrics) -> None:
        self._services = services
        self._metrics = metrics

    async def healthz(self) -> tuple[int, str, bytes]:
        dead = [s.name for s in self._services if not s.alive()]
        if dead:
            return 503, TEXT, f"not running: {', '.join(dead)}\n".encode()
        return 200, TEXT, b"ok\n"

    async def readyz(self) -> tuple[int, str, bytes]:
        for service in self._services:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_S):
                    reason = await service.readiness()
            except TimeoutError:
                reason = f"no answer within {CHECK_TIMEOUT_S:g}s"
            if reason is not None:
                return 503, TEXT, f"{service.name}: {reason}\n".encode()
        return 200, TEXT, b"ready\n"

    async def metrics(self) -> tuple[int, str, bytes]:
        await asyncio.gather(*(self._refresh(s) for s in self._services))
        return 200, CONTENT_TYPE_LATEST, self._metrics.render()

    async def _refresh(self, service: Probed) -> None:
        """One service's gauges; when its servers do not answer, they keep their last
        values (``/readyz`` says why)."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await service.refresh_metrics()
        except Exception as e:
            log.debug("%s: metrics not refreshed: %s", service.name, e)

    async def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        route = {"/metrics": self.metrics, "/healthz": self.healthz, "/readyz": self.readyz}
        page = route.get(path.partition("?")[0])
        if page is None:
            return 404, TEXT, b"not found: try /metrics, /healthz or /readyz\n"
        if method not in ("GET", "HEAD"):
            return 405, TEXT, b"only GET\n"
        return await page()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One HTTP/1.x request, then close."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S * 3):
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > MAX_REQUEST_BYTES:
                    raise ValueError("request too large")
                method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
                code, kind, body = await self.answer(method, path)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            code, kind, body, method = 400, TEXT, b"bad request\n", "GET"
        except (TimeoutError, ConnectionError):
            writer.close()
            return
        header = (f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {kind}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            writer.write(header.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def serving(addr: str, services: Sequence[Probed], metrics: Metrics
                  ) -> AsyncIterator[str]:
    """Serve the probes on ``addr`` while the block runs; yield the base URL it listens
    on (``http://host:port``: the port is the one picked when ``addr``'s is 0)."""
    host, port = parse_addr(addr)
    probe = ProbeServer(services, metrics)
    try:
        server = await asyncio.start_server(probe.handle, host, port,
                                            limit=MAX_REQUEST_BYTES)
    except OSError as e:
        raise ConfigError(f"cannot listen on HODEI_METRICS_ADDR {addr}: {e.strerror}") from e
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    try:
        yield f"http://{shown}:{bound_port}"
    finally:
        server.close()
        await server.wait_closed()
