"""The agent's own NATS user, kept valid while its worker lives.

The platform mints the agent's user JWT for the key pair made here (its seed never leaves
this process) and makes it short-lived (minutes; an ephemeral worker's no longer than its
job's deadline and a grace). nats-server closes a connection whose JWT expires, and nats-py
then gives it up for good, so the agent:

- renews the JWT on ``hodei.worker.<id>.renew`` once half of its life has passed;
- takes a renewed JWT into use by reconnecting (the connection gives the newest JWT at every
  connect, :class:`Identity`) at a quiet moment, between jobs, once the JWT in use is half
  spent. A job that outlives the JWT its connection was made with gets the reconnect while
  it runs, shortly before that JWT expires: subscriptions are made again and every JetStream
  publish (reports, log batches) is retried under its message id, so nothing is lost, only
  delayed.

A refused renewal (the worker is no longer live) is logged as an error; the agent keeps its
JWT until it expires, and then, without NATS, ends as an agent that lost its platform.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from uuid import UUID

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.micro.request import ERROR_CODE_HEADER

from hodei_common.client import error_from_reply
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import RenewReply, RenewRequest
from hodei_common.errors import HodeiError
from hodei_common.natsauth import NKey, jwt
from hodei_common.natsauth.keys import NKeyError
from hodei_common.waiting import wait_any

log = logging.getLogger(__name__)

# A JWT is renewed once this share of its life has passed.
RENEW_AT = 0.5
# A connection is re-made this long before the JWT it was made with expires (at most a
# quarter of that JWT's life), if no quiet moment came first.
RECONNECT_AHEAD_S = 30.0
# A failed renewal is tried again after a quarter of the time its JWT has left, within these.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 30.0
# How long a deliberate reconnect may take before the agent stops waiting for it.
RECONNECT_WAIT_S = 10.0


class RenewalRefused(HodeiError):
    """The platform refused to renew the agent's NATS user (its worker is not live)."""


def lifetime(token: str) -> tuple[float, float]:
    """When a JWT was issued and when it expires (unix seconds; no expiry: never)."""
    claims = jwt.decode(token)
    return float(claims["iat"]), float(claims.get("exp") or float("inf"))


class Identity:
    """The agent's key pair and the newest JWT minted for it, as nats-py's connect callbacks
    (called at every connect and reconnect)."""

    def __init__(self, key: NKey, user_jwt: str) -> None:
        self._key = key
        self.latest = user_jwt
        self.in_use = user_jwt  # the JWT the connection was last made with

    def user_jwt(self) -> bytes:
        self.in_use = self.latest
        return self.latest.encode()

    def sign(self, nonce: str) -> bytes:
        return base64.b64encode(self._key.sign(nonce.encode()))

    @property
    def signer(self) -> tuple[Callable[[], bytes], Callable[[str], bytes]]:
        """The callbacks, as :func:`hodei_common.messaging.connect` takes them."""
        return self.user_jwt, self.sign


class Renewal:
    """Keeps ``identity`` valid on ``nc`` while :meth:`run` runs (see the module's doc)."""

    def __init__(self, nc: NATS, identity: Identity, worker_id: UUID, *,
                 timeout_s: float) -> None:
        self.nc = nc
        self.identity = identity
        self.worker_id = worker_id
        self.timeout_s = timeout_s
        self.renewals = 0
        self.reconnects = 0
        self._renewed = asyncio.Event()  # a newer JWT waits to be taken into use
        self._quiet = asyncio.Event()  # no job runs
        self._quiet.set()
        self._gate = asyncio.Lock()  # held by a reconnect; a job starts after it
        # Held by a renewal's request and by a reconnect: a reconnect would drop the reply.
        self._wire = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def job(self) -> AsyncIterator[None]:
        """While a job runs: not a quiet moment. A job starts once a reconnect under way has
        ended."""
        async with self._gate:
            self._quiet.clear()
        try:
            yield
        finally:
            self._quiet.set()

    async def run(self) -> None:
        """Renew and reconnect until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._renew_loop())
            tg.create_task(self._reconnect_loop())

    async def _renew_loop(self) -> None:
        while True:
            issued, expires = lifetime(self.identity.latest)
            due = issued + (expires - issued) * RENEW_AT
            if due > time.time():
                await asyncio.sleep(min(due - time.time(), 24 * 3600.0))
                continue
            # A reply lost all the same is asked again while the JWT has time left.
            wait_s = min(self.timeout_s, max(RETRY_MIN_S, (expires - time.time()) / 4))
            try:
                async with self._wire:
                    token = await self._ask(wait_s)
            except RenewalRefused as e:
                log.error("NATS user not renewed: %s", e)
            except (HodeiError, NatsError, TimeoutError) as e:
                log.warning("NATS user not renewed (%s); trying again",
                            e or type(e).__name__)
            else:
                self.identity.latest = token
                self.renewals += 1
                self._renewed.set()
                log.info("NATS user renewed until %s",
                         time.strftime("%H:%M:%S", time.gmtime(lifetime(token)[1])))
                continue
            left = expires - time.time()
            await asyncio.sleep(min(RETRY_MAX_S, max(RETRY_MIN_S, left / 4)))

    async def _ask(self, timeout_s: float) -> str:
        """A fresh JWT from the platform; raises RenewalRefused on an error reply."""
        msg = await self.nc.request(subjects.worker_renew(self.worker_id),
                                    msgspec.json.encode(RenewRequest()), timeout=timeout_s)
        if ERROR_CODE_HEADER in (msg.headers or {}):
            raise RenewalRefused(error_from_reply(msg.headers or {}, msg.data).message)
        try:
            token = msgspec.json.decode(msg.data, type=RenewReply).user_jwt
            lifetime(token)
        except (msgspec.DecodeError, NKeyError, KeyError) as e:
            raise HodeiError(f"renewal: the reply holds no user JWT: {e}") from e
        return token

    async def _reconnect_loop(self) -> None:
        while True:
            await self._renewed.wait()
            self._renewed.clear()
            while self.identity.in_use != self.identity.latest and not self.nc.is_closed:
                issued, expires = lifetime(self.identity.in_use)
                # Not before the JWT in use is half spent: a reusable worker's renewals to
                # cover each new job then cost no reconnect per job.
                half = issued + (expires - issued) * RENEW_AT
                if half > time.time():
                    await asyncio.sleep(half - time.time())
                ahead = min(RECONNECT_AHEAD_S, (expires - issued) / 4)
                await wait_any(self._quiet, within_s=max(0.0, expires - ahead - time.time()))
                async with self._gate:
                    if not self._quiet.is_set() and time.time() < expires - ahead:
                        continue  # a job started meanwhile: wait for its end again
                    async with self._wire:
                        await self._reconnect()

    async def _reconnect(self) -> None:
        """Re-make the connection with the newest JWT, and wait until it is back."""
        quiet = self._quiet.is_set()
        log.info("reconnecting to NATS with its renewed user (%s)",
                 "between jobs" if quiet else "before its JWT in use expires")
        await self.nc.force_reconnect()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_WAIT_S
        while not (self.nc.is_connected and self.identity.in_use == self.identity.latest):
            if loop.time() >= deadline:
                log.warning("nats: not reconnected with the renewed user within %gs",
                            RECONNECT_WAIT_S)
                return
            await asyncio.sleep(0.01)
        self.reconnects += 1
