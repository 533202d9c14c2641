"""``hodei debug sub``: what travels on NATS, printed as ``nats sub`` prints it, for machines
without the ``nats`` CLI (see docs/debugging.md).

It prints only what NATS delivers to the credentials it connects with: a user's are kept to
its namespace's logs, an admin's reach the platform's events too, and nobody's reach the
assignments that carry a job's env values.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

import typer
from nats import nuid
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy

from hodei_cli import natsview
from hodei_cli.connection import cli_settings
from hodei_common import messaging
from hodei_common.errors import PermissionDeniedError, UnavailableError, ValidationError
from hodei_common.natsauth.permissions import CLI_IDENTITY
from hodei_common.settings import Settings

app = typer.Typer(help="Look at what travels on NATS.", no_args_is_help=True)

# An ordered consumer delivers a stored message within milliseconds: a replay that got none
# in this long has nothing stored on its subject.
EMPTY_AFTER_S = 1.0
# A replay that stalls this long mid-way (the server went away) ends with an error.
STALLED_AFTER_S = 30.0
JS_TIMEOUT_S = 5.0
HELP = "docs/debugging.md says which subjects a user and an admin may read"


@dataclass
class Printer:
    """Prints messages (those of ``job`` only, when given) until ``count`` are printed."""

    count: int | None
    job: str | None
    printed: int = 0

    @property
    def done(self) -> bool:
        return self.count is not None and self.printed >= self.count

    def show(self, msg: Msg, stored: tuple[str, int] | None = None) -> None:
        if not self._wanted(msg):
            return
        self.printed += 1
        where = None
        if stored is not None:
            where = (stored[0], stored[1], msg.metadata.timestamp)
        sys.stdout.write(natsview.block(self.printed, msg.subject, msg.headers, msg.data, where))
        sys.stdout.flush()  # a watch piped on is read as it goes

    def _wanted(self, msg: Msg) -> bool:
        """A job's messages: its id is a token of the subject (its log, its events), or the
        payload's ``job_id`` or ``correlation_id`` (its workers' events, older job events)."""
        if self.job is None or self.job in msg.subject.split("."):
            return True
        body = natsview.decoded(msg.data)
        return isinstance(body, dict) and self.job in (
            body.get("job_id"), body.get("correlation_id"))


@app.command("sub")
def sub(
    subject: Annotated[list[str] | None, typer.Argument(
        help="subjects to watch, wildcards allowed (with --stream: filters; none: all)",
        metavar="SUBJECT", show_default=False)] = None,
    stream: Annotated[str | None, typer.Option(
        "--stream", help="replay this stream's stored messages from the first, then stop",
        show_default=False)] = None,
    count: Annotated[int | None, typer.Option(
        "--count", min=1, help="stop after this many messages", show_default=False)] = None,
    job: Annotated[str | None, typer.Option(
        "--job", help="only this job's messages (its log, its events, its workers')",
        show_default=False)] = None,
) -> None:
    """Print each message on SUBJECT... (subject, headers, payload: pretty when it is JSON)
    as it arrives, until Ctrl-C or --count, like `nats sub`; with --stream, replay what the
    stream stores, like `nats stream view`."""
    filters = list(subject or [])
    if not filters and stream is None:
        raise ValidationError("give at least one SUBJECT to watch, or --stream NAME")
    for each in filters:
        check_subject(each)
    printer = Printer(count=count, job=None if job is None else str(parse_job(job)))
    settings = cli_settings()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
        asyncio.run(watch(settings, filters, stream, printer))


def check_subject(subject: str) -> None:
    """One line for a subject NATS would refuse to subscribe to."""
    tokens = subject.split(".")
    if not subject or any(not t or any(c.isspace() for c in t) for t in tokens) or \
            any(">" in t and t != ">" for t in tokens) or ">" in tokens[:-1] or \
            any("*" in t and t != "*" for t in tokens):
        raise ValidationError(f"{subject!r} is not a NATS subject (tokens separated by '.', "
                              "'*' for one token, '>' for the rest)")


def parse_job(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ValidationError(f"--job must be a job id (a UUID), got {value!r}") from None


async def watch(settings: Settings, filters: list[str], stream: str | None,
                printer: Printer) -> None:
    """Print what the subjects (or the stream) deliver, on a connection of the CLI's."""
    async with connected(settings) as (nc, refusals):
        if stream is None:
            await live(nc, filters, printer, refusals)
        else:
            for each in filters or [""]:  # "": the whole stream
                await replay(nc, stream, each, printer, refusals)
                if printer.done:
                    break


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[tuple[NATS, list[str]]]:
    """A connection as the CLI, and the permission refusals the server sends it."""
    refusals: list[str] = []

    def heard(error: Exception) -> None:
        if "permissions violation" in str(error).lower():
            refusals.append(str(error).lower())

    try:
        nc = await messaging.connect(settings, name=CLI_IDENTITY, initial_attempts=1,
                                     on_error=heard)
    except UnavailableError as e:
        hint = "" if settings.nats_url else " (is `hodei dev up` still running?)"
        raise UnavailableError(f"{e}{hint}") from e
    try:
        yield nc, refusals
    finally:
        await nc.close()


async def live(nc: NATS, filters: list[str], printer: Printer, refusals: list[str]) -> None:
    """Subscribe to every subject, say so on stderr once the server took them, then print."""
    arrived: asyncio.Queue[Msg] = asyncio.Queue()
    for each in filters:
        await nc.subscribe(each, cb=arrived.put)
    await _round_trip(nc)
    for each in filters:
        if f'subscription to "{each.lower()}"' in " ".join(refusals):
            raise PermissionDeniedError(f"these credentials may not subscribe to {each}; {HELP}")
    print(f"Subscribing on {', '.join(filters)}", file=sys.stderr, flush=True)
    while not printer.done:
        printer.show(await arrived.get())


async def replay(nc: NATS, stream: str, filter_subject: str, printer: Printer,
                 refusals: list[str]) -> None:
    """Print ``stream``'s messages on ``filter_subject`` from the first stored to the last,
    through an ordered consumer created by name (the form permissions can confine) and
    deleted after."""
    js = nc.jetstream(timeout=JS_TIMEOUT_S)
    what = f"stream {stream}" + (f" on {filter_subject}" if filter_subject else "")
    name = nuid.NUID().next().decode()
    try:
        reader = await js.subscribe(
            filter_subject, stream=stream, ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL, config=ConsumerConfig(name=name),
            inactive_threshold=5.0)
    except (NatsError, TimeoutError) as e:
        await _round_trip(nc)
        if refusals:
            raise PermissionDeniedError(f"these credentials may not read {what}; {HELP}") from e
        raise UnavailableError(f"cannot read {what}: {e or type(e).__name__}") from e
    try:
        wait_s = EMPTY_AFTER_S
        while not printer.done:
            try:
                msg = await reader.next_msg(timeout=wait_s)
            except TimeoutError:
                if wait_s == EMPTY_AFTER_S:
                    return  # nothing stored
                raise UnavailableError(f"{what} stopped delivering for {wait_s:g}s") from None
            wait_s = STALLED_AFTER_S
            printer.show(msg, (stream, msg.metadata.sequence.stream))
            if msg.metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(NatsError, TimeoutError):
            await reader.unsubscribe()
            await js.delete_consumer(stream, name)


async def _round_trip(nc: NATS) -> None:
    """Until the server answered everything sent so far, refusals included."""
    await nc.flush()
    await asyncio.sleep(0.05)  # nats-py hands errors to its callback in a task of its own
