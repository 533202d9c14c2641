"""The bootstrap-token exchange on ``hodei.worker.register``."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro.request import ERROR_CODE_HEADER

from hodei_agent.config import AGENT_VERSION, AgentSettings
from hodei_common import tracing
from hodei_common.client import error_from_reply
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import RegisterReply, RegisterRequest
from hodei_common.errors import HodeiError, UnavailableError

log = logging.getLogger(__name__)

RETRY_S = 0.25
# What the agent is started with to register, and needs no more once it has.
SECRET_VARIABLES = ("HODEI_BOOTSTRAP_TOKEN", "HODEI_BOOTSTRAP_CREDS")


class RegistrationRefused(HodeiError):
    """The platform refused the bootstrap token (invalid, expired or already used)."""


def forget_secrets() -> None:
    """Drop the token and bootstrap credentials from the environment (the settings hold
    them), so that nothing started from here on (a job) inherits them."""
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)


async def register(nc: NATS, settings: AgentSettings, public_key: str | None = None
                   ) -> RegisterReply:
    """Exchange the bootstrap token (and ``public_key``, the agent's own nkey, for a NATS user
    bound to it) for this worker's orders.

    Retries while nobody answers (the provisioner may still be starting) until
    ``register_deadline_s``; raises RegistrationRefused on an error reply.
    """
    request = RegisterRequest(
        worker_id=settings.worker_id,
        token=settings.bootstrap_token.get_secret_value(),
        hostname=socket.gethostname(),
        pid=os.getpid(),
        agent_version=AGENT_VERSION,
        public_key=public_key,
    )
    data = msgspec.json.encode(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.register_deadline_s
    while True:
        left = deadline - loop.time()
        try:
            # In the trace of the job the worker was made for, which its provider handed on.
            with tracing.environ_span("agent register", os.environ):
                msg = await nc.request(
                    subjects.WORKER_REGISTER,
                    data,
                    timeout=min(settings.register_timeout_s, max(left, 0.1)),
                    headers=tracing.inject(),
                )
            break
        except (NoRespondersError, NatsTimeoutError) as e:
            if loop.time() + RETRY_S >= deadline:
                raise UnavailableError(
                    f"nobody answered {subjects.WORKER_REGISTER} within "
                    f"{settings.register_deadline_s:g}s"
                ) from e
            log.info("registration: no answer yet (%s); retrying", type(e).__name__)
            await asyncio.sleep(RETRY_S)
    headers = msg.headers or {}
    if ERROR_CODE_HEADER in headers:
        raise RegistrationRefused(error_from_reply(headers, msg.data).message)
    try:
        reply = msgspec.json.decode(msg.data, type=RegisterReply)
    except msgspec.DecodeError as e:
        raise HodeiError(f"registration: the reply is not a RegisterReply: {e}") from e
    if reply.worker_id != settings.worker_id:
        raise HodeiError(
            f"registration: the reply is for worker {reply.worker_id}, not {settings.worker_id}"
        )
    if public_key is not None and reply.user_jwt is None:
        raise HodeiError("registration: the platform sent no NATS user for this agent")
    return reply
