"""NATS connection and JetStream topology: connect (reconnecting forever), declare streams.

Streams and consumers are declared idempotently at start by every service that uses them,
so start order does not matter and a redeclare with a changed config updates in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Protocol
from uuid import UUID

from nats import nuid
from nats.aio.client import (
    DEFAULT_INBOX_PREFIX,
    Credentials,
    JWTCallback,
    RawCredentials,
    SignatureCallback,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, ServerError, ServiceUnavailableError

from hodei_common.contracts import subjects
from hodei_common.contracts.logs import LOGS_MAX_AGE_S
from hodei_common.errors import ConfigError, UnavailableError
from hodei_common.natsauth import jwt
from hodei_common.natsauth.keys import NKeyError
from hodei_common.urls import redact_url


class NatsSettings(Protocol):
    """What connecting takes from a process's settings: :class:`hodei_common.settings.Settings`
    has it, and so has the agent's, which is kept free of pydantic to start fast."""

    @property
    def nats_user(self) -> str | None: ...

    @property
    def nats_password(self) -> str | None: ...

    def resolved_nats_url(self) -> str: ...

    def resolved_creds(self, identity: str) -> Path | None: ...


log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 120.0
DAY_S = 24 * 3600.0
JETSTREAM_READY_S = 10.0  # how long a just-started server may take to serve JetStream


def _stream(name: str, subject_filters: list[str], max_age_s: float,
            *, allow_direct: bool = False) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=subject_filters,
        storage=StorageType.FILE,
        # JetStream refuses a duplicate window longer than the stream keeps messages.
        duplicate_window=min(DUPLICATE_WINDOW_S, max_age_s),
        max_age=max_age_s,
        allow_direct=allow_direct,
    )


def stream_configs(logs_max_age_s: float = LOGS_MAX_AGE_S) -> list[StreamConfig]:
    """The JetStream streams Hodei owns. Duplicate windows make outbox publishing exactly-once.

    ``logs_max_age_s`` is how long the LOGS stream keeps lines: services pass the platform's
    (:mod:`hodei_common.platform_settings`), so they all declare it alike. Finished jobs' logs
    are read from their archive after that.
    """
    return [
        _stream(subjects.JOB_EVENTS_STREAM, [subjects.JOB_EVENTS_SUBJECTS], 30 * DAY_S),
        _stream(subjects.WORKER_EVENTS_STREAM, list(subjects.WORKER_EVENTS_SUBJECTS), 30 * DAY_S),
        _stream(subjects.WORKER_STATUS_STREAM, [subjects.WORKER_STATUS_SUBJECTS], 7 * DAY_S),
        _stream(subjects.WORKER_ASSIGN_STREAM, [subjects.WORKER_ASSIGN_SUBJECTS], DAY_S),
        # Direct gets name their subject in the request's own: permissions can confine them.
        _stream(subjects.LOGS_STREAM, [subjects.LOGS_SUBJECTS], logs_max_age_s,
                allow_direct=True),
    ]


def credentials(settings: NatsSettings, identity: str) -> tuple[Credentials | None, str]:
    """What to connect as ``identity`` with: the creds (None: none asked for) and the inbox
    prefix its user may receive replies on (``_INBOX.<user name>``: its JWT's name)."""
    path = settings.resolved_creds(identity)
    if path is None:
        return None, DEFAULT_INBOX_PREFIX.decode()
    return creds_file(path)


class CredsFile(RawCredentials):
    """A creds file that nats-py reads at each (re)connect, as it reads one given by path (a
    file replaced on disk is used from the next reconnect on), but parses in memory: given a
    path, it reads the seed unbuffered, one system call per byte, some milliseconds of CPU
    per connection on both sides of the JWT."""

    def __init__(self, path: Path) -> None:  # no super().__init__: ``data`` is read anew
        self.path = path

    @property
    def data(self) -> str:  # type: ignore[override]
        return self.path.read_text()

    def __str__(self) -> str:  # the file's name, never its contents
        return str(self.path)

    def __repr__(self) -> str:
        return f"CredsFile({str(self.path)!r})"


def creds_file(path: Path) -> tuple[Credentials, str]:
    """What to connect with the creds file ``path``: it, and its user's inbox prefix."""
    try:
        text = path.read_text()
        name = jwt.decode(jwt.creds_user_jwt(text))["name"]
    except (OSError, KeyError, NKeyError) as e:
        raise ConfigError(f"cannot use the NATS credentials {path}: {e}") from e
    return CredsFile(path), subjects.inbox_prefix(name)


async def connect(
    settings: NatsSettings,
    name: str,
    *,
    identity: str | None = None,
    creds: tuple[Credentials | None, str] | None = None,
    url: str | None = None,
    initial_attempts: int | None = None,
    signer: tuple[JWTCallback, SignatureCallback] | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> NATS:
    """Connect to NATS as ``identity`` (default: ``name``; see :func:`credentials`), or with
    ``creds`` given as that function returns them, retrying the first connect and
    reconnecting forever afterwards.

    ``signer`` (with ``creds`` naming no file, only the inbox prefix) gives the user JWT and
    signs the server's nonce at each (re)connect: a user whose JWT is renewed while it runs.

    ``initial_attempts`` None retries the first connect forever (a service waiting for its
    NATS to come up); a number makes a CLI give up with one clear line.

    ``on_error`` also hears every error the server sends once connected (a permissions
    violation is one: the server refuses a subscription only that way).
    """
    server = url or settings.resolved_nats_url()
    user_credentials, inbox_prefix = creds or credentials(settings, identity or name)
    nc = NATS()
    errors: list[Exception] = []
    shown = redact_url(server)

    async def error_cb(e: Exception) -> None:
        errors.append(e)
        # uvloop's errors do not name the address (asyncio's "Connect call failed" did).
        log.warning("nats: %s (%s)", e, shown)
        (on_error or _unheard)(e)

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):  # our own close is not news
            log.warning("nats: disconnected from %s", shown)

    async def on_reconnect() -> None:
        log.info("nats: reconnected to %s", shown)

    attempt = 0
    while True:
        attempt += 1
        try:
            await nc.connect(
                servers=[server],
                name=name,
                user=settings.nats_user,
                password=settings.nats_password,
                user_credentials=user_credentials,
                user_jwt_cb=signer[0] if signer else None,
                signature_cb=signer[1] if signer else None,
                inbox_prefix=inbox_prefix,
                # nats-py retries the first connect forever when this is -1; bound it here and
                # lift the bound once connected so later disconnects reconnect forever.
                max_reconnect_attempts=-1 if initial_attempts is None else initial_attempts,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds; floats work
                connect_timeout=2,
                error_cb=error_cb,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
        except (NoServersError, OSError, TimeoutError) as e:
            refusal = next((r for r in reversed(errors)
                            if isinstance(r, NatsError) and _refused(r)), None)
            if refusal is not None:
                await nc.close()
                raise _refusal(server, user_credentials, refusal, signed=signer is not None) from e
            if initial_attempts is not None:
                reason = str(e) or type(e).__name__
                raise UnavailableError(f"cannot reach NATS at {server}: {reason}") from e
            log.warning("nats: %s not reachable yet (%s); retrying", server, e)
            await asyncio.sleep(min(0.2 * attempt, 2.0))
        except NatsError as e:
            if not _refused(e):
                raise
            await nc.close()
            raise _refusal(server, user_credentials, e, signed=signer is not None) from e
        else:
            nc.options["max_reconnect_attempts"] = -1
            return nc


def _unheard(error: Exception) -> None:
    """No one else listens to a connection's errors."""


def _refused(error: NatsError) -> bool:
    """Whether the server refused who we are (a wrong, expired or missing credential)."""
    text = str(error).lower()
    return "authorization violation" in text or "authentication" in text \
        or "expired" in text


def _refusal(server: str, creds: Credentials | None, error: NatsError, *,
             signed: bool = False) -> ConfigError:
    """One line saying the server refused us: a retry would not change that."""
    who = f"the credentials {creds}" if isinstance(creds, str | CredsFile) else (
        "a connection without credentials" if creds is None and not signed
        else "this connection")
    reason = str(error).removeprefix("nats: ").strip("'")
    return ConfigError(f"NATS at {server} refused {who}: {reason}")


# JetStream's error code for a stream whose store could not be made.
STREAM_STORE_FAILED = 10049


async def ensure_streams(js: JetStreamContext, configs: list[StreamConfig] | None = None,
                         *, ready_within_s: float = JETSTREAM_READY_S) -> None:
    """Create each stream, or update it in place when it exists with another config.

    A nats-server that has just started may not serve its account's JetStream API yet (the
    account's JWT is still being resolved): nobody answers. And services starting together
    on a new server create the same streams at once: the server may refuse one of two
    concurrent creations of a stream with "error creating store for stream" (its log says
    why), after which the stream exists. Both are waited out, up to ``ready_within_s``."""
    deadline = asyncio.get_running_loop().time() + ready_within_s
    for config in configs or stream_configs():
        while True:
            try:
                await _declare(js, config)
                break
            except ServiceUnavailableError:
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                log.info("nats: JetStream not ready yet; retrying")
                await asyncio.sleep(0.1)
            except ServerError as e:
                if e.err_code != STREAM_STORE_FAILED or \
                        asyncio.get_running_loop().time() >= deadline:
                    raise
                log.info("nats: stream %s not created (%s); retrying", config.name, e.description)
                await asyncio.sleep(0.1)


async def _declare(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # "stream name already in use with a different configuration"
        await js.update_stream(config)


@contextlib.asynccontextmanager
async def confined_reading(
    js: JetStreamContext, stream: str, filter_subject: str
) -> AsyncIterator[JetStreamContext.PushSubscription]:
    """An ordered consumer of ``stream``'s messages on ``filter_subject`` from the first,
    created by name so that its filter is in the request's subject (what NATS permissions can
    confine a reader to), and deleted after use: every ``job logs`` makes one, and thousands
    left to expire would make the stream refuse new readers."""
    name = nuid.NUID().next().decode()
    sub = await js.subscribe(
        filter_subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(name=name),
        # Backstop only: a reader that dies leaves a consumer the server drops this long
        # after its interest went away.
        inactive_threshold=5.0)
    try:
        yield sub
    finally:
        with contextlib.suppress(NatsError, TimeoutError):
            await sub.unsubscribe()
            await js.delete_consumer(stream, name)


# A batched direct get (nats-server 2.11+): each stored message, then a 204 "EOB" status
# saying how many more match; 404 when none does.
DIRECT_BATCH = 256
DIRECT_BATCH_BYTES = 1 << 20
DIRECT_WAIT_S = 10.0


class DirectGetError(NatsError):
    """A batched direct get was refused or went unanswered."""


async def direct_batches(
    nc: NATS, stream: str, subject: str, *, batch: int = DIRECT_BATCH,
    max_bytes: int = DIRECT_BATCH_BYTES,
) -> AsyncGenerator[Msg, None]:
    """Every message of ``stream`` on ``subject`` (wildcards allowed), oldest first, by batched
    direct gets: no consumer is made, and at most ``max_bytes`` travel per request. Each
    message's headers hold its stream subject (``Nats-Subject``) and sequence
    (``Nats-Sequence``). It ends when none is left, new ones included.

    The request names its subject in the body, not in the API subject, so NATS permissions
    cannot confine it to a part of the stream: for the platform's own readers."""
    request = {"seq": 1, "next_by_subj": subject, "batch": batch, "max_bytes": max_bytes}
    api = subjects.js_api("DIRECT.GET", stream)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        while True:
            await nc.publish(api, json.dumps(request).encode(), reply=inbox)
            while True:
                try:
                    msg = await sub.next_msg(timeout=DIRECT_WAIT_S)
                except NatsTimeoutError as e:
                    raise DirectGetError(f"{stream}: no answer to a direct get of {subject}") \
                        from e
                headers = msg.headers or {}
                status = headers.get(subjects.HEADER_STATUS)
                if status is None:
                    yield msg
                    continue
                if status == "404":
                    return
                if status != "204":
                    raise DirectGetError(f"{stream}: direct get of {subject} refused: "
                                         f"{status} {headers.get(subjects.HEADER_DESCRIPTION, '')}")
                break
            if int(headers.get(subjects.HEADER_NUM_PENDING, "0")) == 0:
                return
            request["seq"] = int(headers[subjects.HEADER_LAST_SEQUENCE]) + 1
    finally:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create a durable consumer, or update it in place when its config changed."""
    # The server's CONSUMER.CREATE creates, or updates the fields that may change, and is a
    # no-op when the config is the same: every replica can declare at start.
    await js.add_consumer(stream, config)


async def wake_scheduler(nc: NATS, about: UUID) -> None:
    """Hint the schedulers that work may be possible now (see ``SCHEDULER_WAKE``): ``about``
    is the job just queued or the worker just registered, committed before this is sent."""
    try:
        await nc.publish(subjects.SCHEDULER_WAKE, str(about).encode())
    except (NatsError, OSError) as e:  # the durable event still wakes them
        log.debug("scheduler wake-up not sent: %s", e)
