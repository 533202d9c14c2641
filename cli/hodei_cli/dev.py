"""``hodei dev up|down|status``: the whole platform on this machine."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import typer

from hodei_cli.connection import cli_settings
from hodei_cli.embedded import read_dev_file, serve
from hodei_cli.services import SERVICES
from hodei_common import eventloop, messaging
from hodei_common.contracts import subjects
from hodei_common.errors import UnavailableError
from hodei_common.natsauth.permissions import CLI_IDENTITY
from hodei_common.runner import configure_logging
from hodei_common.settings import Settings

app = typer.Typer(help="Run the whole platform on this machine.", no_args_is_help=True)

PLATFORM_SERVICES = tuple(SERVICES)


@app.command("up")
def up() -> None:
    """Start NATS, PostgreSQL and every service in the foreground until Ctrl-C.

    HODEI_DOCKER_ENABLED=1 enables the Docker provider (image: $HODEI_WORKER_IMAGE, else the
    configured one); `hodei provider set docker` changes it later.
    """
    settings = cli_settings()
    configure_logging(os.environ.get("HODEI_LOG_LEVEL", "WARNING"))
    docker = os.environ.get("HODEI_DOCKER_ENABLED", "").lower() in ("1", "true", "yes")
    eventloop.run(serve(settings, docker=docker,
                        worker_image=os.environ.get("HODEI_WORKER_IMAGE") or None))


@app.command("down")
def down(
    wait: float = typer.Option(30.0, help="seconds to wait for it to stop"),
) -> None:
    """Stop the platform that `hodei dev up` runs for this HODEI_HOME."""
    settings = cli_settings()
    info = read_dev_file(settings)
    pid = info.get("pid") if info else None
    if not isinstance(pid, int):
        raise UnavailableError(f"no Hodei platform is running on {settings.home}")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        settings.dev_file().unlink(missing_ok=True)
        raise UnavailableError(
            f"the platform (pid {pid}) is gone; removed its stale dev.json"
        ) from None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            typer.echo("stopped")
            return
        time.sleep(0.1)
    raise UnavailableError(f"the platform (pid {pid}) did not stop within {wait:g}s")


async def _ping_all(settings: Settings) -> dict[str, bool]:
    nc = await messaging.connect(settings, name=CLI_IDENTITY, initial_attempts=1)
    try:
        result = {}
        for name in PLATFORM_SERVICES:
            try:
                await nc.request(f"$SRV.PING.{subjects.service_name(name)}", b"", timeout=1.0)
                result[name] = True
            except Exception:  # no responders or time-out both mean "not up"
                result[name] = False
        return result
    finally:
        await nc.close()


@app.command("status")
def status() -> None:
    """Say whether the platform is up and which services answer."""
    settings = cli_settings()
    health = asyncio.run(_ping_all(settings))
    for name, ok in health.items():
        typer.echo(f"{name:<10} {'up' if ok else 'DOWN'}")
    if not all(health.values()):
        raise typer.Exit(1)
