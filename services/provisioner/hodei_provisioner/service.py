"""The provisioner service: two durable consumers (provision, release) and the register
endpoint agents exchange their bootstrap token at.

Registrations are worked concurrently (up to ``provisioner_max_in_flight`` per replica) by
the shared :class:`~hodei_common.endpoints.EndpointServer`; a refusal is one line that never
quotes the token.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar
from uuid import UUID

import asyncpg
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from hodei_common import messaging
from hodei_common.consumer import ConsumerSpec, consume, decode
from hodei_common.contracts import subjects
from hodei_common.contracts.agent import (
    RegisterReply,
    RegisterRequest,
    RenewReply,
    RenewRequest,
)
from hodei_common.contracts.workers import ProvisionRequested, WorkerFailed, WorkerTerminating
from hodei_common.endpoints import Endpoint, EndpointServer, SubjectEndpoint
from hodei_common.errors import ConfigError, HodeiError, ValidationError
from hodei_common.natsauth.keys import NKeyError
from hodei_common.natsauth.revoker import Revoker, platform_account
from hodei_common.natsauth.server import Issuer
from hodei_common.recovery import Backoff, Recovery
from hodei_common.runner import HodeiService, Loop
from hodei_common.waiting import wait_any
from hodei_provisioner import handlers, news, revocations
from hodei_provisioner.config import ProvisionerSettings
from hodei_provisioner.providers import News, Provider
from hodei_provisioner.providers.docker import DockerProvider, container_env
from hodei_provisioner.providers.kubernetes import KubernetesProvider
from hodei_provisioner.providers.local import LocalProvider, inherited_env
from hodei_provisioner.reconcile import reconcile

log = logging.getLogger(__name__)


MAX_REGISTER_BYTES = 16 * 1024
# A pod's terminationGracePeriodSeconds, at least: its agent ends its job and reports.
POD_GRACE_S = 10.0

PROVISION_SPEC = ConsumerSpec(stream=subjects.WORKER_EVENTS_STREAM,
                              durable=subjects.PROVISIONER_REQUESTS_CONSUMER,
                              filter_subjects=[subjects.PROVISION_REQUESTED])
# A FAILED worker's resource is destroyed too (whoever declared it lost).
RELEASE_SPEC = ConsumerSpec(stream=subjects.WORKER_EVENTS_STREAM,
                            durable=subjects.PROVISIONER_RELEASE_CONSUMER,
                            filter_subjects=[subjects.WORKER_TERMINATING, subjects.WORKER_FAILED])


def default_providers(settings: ProvisionerSettings) -> list[Provider]:
    """The providers this build has: local processes, Docker containers and Kubernetes
    pods (an engine or cluster is only contacted once one of its workers is wanted or its
    provider is reconciled)."""
    return [
        LocalProvider(settings.provisioner_agent_command, settings.workers_dir(),
                      env=inherited_env(os.environ),
                      grace_s=settings.provisioner_destroy_grace_s,
                      template=settings.provisioner_agent_template,
                      # A forked agent's /proc environ is the template's: this shows which
                      # platform it serves, as a spawned agent's own environment does.
                      template_env={"HODEI_NATS_URL": settings.agent_nats_url()}),
        DockerProvider(env=container_env(os.environ),
                       stop_grace_s=settings.provisioner_destroy_grace_s),
        KubernetesProvider(env=container_env(os.environ),
                           grace_s=max(settings.provisioner_destroy_grace_s, POD_GRACE_S)),
    ]


class ProvisionerService(HodeiService):
    """Creates workers on request, lets their agents register, destroys them when done."""

    name: ClassVar[str] = subjects.PROVISIONER_SERVICE
    description: ClassVar[str] = "Hodei provisioner: creates, registers and destroys workers"
    consumers: ClassVar[tuple[ConsumerSpec, ...]] = (PROVISION_SPEC, RELEASE_SPEC)
    settings: ProvisionerSettings

    def __init__(
        self, settings: ProvisionerSettings, providers: Sequence[Provider] | None = None
    ) -> None:
        super().__init__(settings)
        self.providers = {p.kind: p for p in (providers or default_providers(settings))}
        self.endpoints = EndpointServer(
            "provisioner", max_in_flight=settings.provisioner_max_in_flight,
            deadline_s=settings.request_timeout_s,
        )
        self._deps: handlers.Deps | None = None
        self._news: asyncio.Queue[News] = asyncio.Queue()
        self._revoker: Revoker | None = None

    @property
    def deps(self) -> handlers.Deps:
        assert self._deps is not None, "service not started"
        return self._deps

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            for provider in self.providers.values():
                await provider.close()
            if self._revoker is not None:
                await self._revoker.nc.close()

    async def setup(self) -> None:
        issuer = self._issuer()
        self._revoker = await self._connect_revoker(issuer)
        self._deps = handlers.Deps(
            pool=self.pool,
            providers=self.providers,
            token_ttl_s=self.settings.provisioner_token_ttl_s,
            heartbeat_interval_s=self.platform.heartbeat_interval_s,
            agent_nats_url=self.settings.agent_nats_url(),
            recovery=Recovery(self.pool, self.nc, actor=handlers.ACTOR,
                              backoff=Backoff.from_settings(self.settings),
                              metrics=self.metrics),
            issuer=issuer,
            agent_jwt_lifetime_s=self.settings.provisioner_agent_jwt_lifetime_s,
            agent_jwt_grace_s=self.settings.provisioner_agent_jwt_grace_s,
            metrics=self.metrics,
        )
        for provider in self.providers.values():
            provider.on_news(self._news.put_nowait)
            await provider.start()
        register = Endpoint("worker_register", subjects.WORKER_REGISTER, RegisterRequest,
                            self._register, max_bytes=MAX_REGISTER_BYTES)
        renew = SubjectEndpoint("worker_renew", subjects.WORKER_RENEW, RenewRequest,
                                self._renew, max_bytes=MAX_REGISTER_BYTES)
        await self.endpoints.add(self.micro, [register, renew], subjects.PROVISIONER_QUEUE_GROUP)

    def _issuer(self) -> Issuer | None:
        """What mints agents' NATS users, from the signing key configured (None: none)."""
        seed_file = self.settings.nats_signing_key
        if seed_file is None:
            return None
        own = self.settings.resolved_creds(subjects.service_name(self.name))
        if own is None:
            raise ConfigError("HODEI_NATS_SIGNING_KEY is set, but the provisioner has no NATS "
                              "credentials of its own to name the account (HODEI_CREDS)")
        try:
            return Issuer.load(seed_file.expanduser(), own)
        except (OSError, KeyError, NKeyError) as e:
            raise ConfigError(f"HODEI_NATS_SIGNING_KEY: cannot use {seed_file}: {e}") from e

    async def _connect_revoker(self, issuer: Issuer | None) -> Revoker | None:
        """What revokes ended agents' NATS users, connected as the system account's user
        configured (None: none is)."""
        operator_key, system_creds = (self.settings.nats_operator_key,
                                      self.settings.nats_system_creds)
        if operator_key is None and system_creds is None:
            return None
        if operator_key is None or system_creds is None or issuer is None:
            raise ConfigError("revoking agents' NATS users takes HODEI_NATS_OPERATOR_KEY, "
                              "HODEI_NATS_SYSTEM_CREDS and HODEI_NATS_SIGNING_KEY together")
        try:
            account = platform_account(operator_key.expanduser(), issuer)
        except (OSError, NKeyError) as e:
            raise ConfigError(f"HODEI_NATS_OPERATOR_KEY: cannot use {operator_key}: {e}"
                              ) from e
        nc = await messaging.connect(
            self.settings, f"{subjects.service_name(self.name)}-revoker",
            creds=messaging.creds_file(system_creds.expanduser()))
        revoker = Revoker(account, nc, timeout_s=self.settings.request_timeout_s)
        try:
            await revoker.check()
        except HodeiError as e:
            await nc.close()
            raise ConfigError(f"HODEI_NATS_OPERATOR_KEY: {e}") from e
        return revoker

    def loops(self) -> list[Loop]:
        loops: list[Loop] = [self._provision_loop, self._release_loop, self._reconcile_loop,
                             self._news_loop]
        return loops + ([self._revoke_loop] if self._revoker is not None else [])

    async def stop_fetching(self) -> None:
        """Let registrations in flight finish (up to the grace period), then cancel them."""
        await self.endpoints.drain(self.settings.drain_grace_s)

    # --- consumers -----------------------------------------------------------------------
    async def _provision_loop(self) -> None:
        await consume(self.js, PROVISION_SPEC, self._on_provision, self.stopping)

    async def _release_loop(self) -> None:
        await consume(self.js, RELEASE_SPEC, self._on_release, self.stopping)

    async def _on_provision(self, msg: Msg) -> None:
        await handlers.provision(self.deps, decode(msg, ProvisionRequested))

    async def _on_release(self, msg: Msg) -> None:
        event: WorkerTerminating | WorkerFailed = (
            decode(msg, WorkerFailed) if msg.subject == subjects.WORKER_FAILED
            else decode(msg, WorkerTerminating))
        await handlers.release(self.deps, event)

    # --- what providers see happen to resources -------------------------------------------
    async def _news_loop(self) -> None:
        """A provider's news of a resource, applied in the order told (:mod:`news`)."""
        while not self.stopping.is_set():
            try:
                told = await asyncio.wait_for(self._news.get(), 0.5)
            except TimeoutError:
                continue
            try:
                await news.apply(self.deps, told)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, NatsError) as e:
                # The supervisor's heartbeat check and reconciliation are the fallbacks.
                log.warning("worker %s: could not record that %s (%s)", told.worker_id,
                            told.reason, e)

    # --- reconciliation and revocation ---------------------------------------------------
    async def _reconcile_loop(self) -> None:
        """A pass at start, then every interval, until stopping."""
        await self._every(self.settings.provisioner_reconcile_interval_s, "reconciliation",
                          lambda: reconcile(self.deps))

    async def _revoke_loop(self) -> None:
        """Every interval, the ended workers' agents' NATS users revoked (:mod:`revocations`)."""
        revoker = self._revoker
        assert revoker is not None

        async def revoke() -> None:
            count = await revocations.keep_revoked(self.pool, revoker)
            if count is not None:
                log.debug("NATS users revoked: %d ended agents'", count)

        await self._every(self.settings.provisioner_revoke_interval_s,
                          "revoking ended agents' NATS users", revoke)

    async def _every(self, interval_s: float, what: str,
                     one_pass: Callable[[], Awaitable[object]]) -> None:
        """Run ``one_pass`` at start and then every ``interval_s`` until stopping; a failure
        (an engine down or not installed, the database or NATS away) is said once, not every
        pass, and the next pass tries again."""
        failing = False
        while not self.stopping.is_set():
            try:
                await one_pass()
                failing = False
            except (HodeiError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                if not failing:
                    log.warning("%s failed (%s); retrying every %gs", what, e, interval_s)
                failing = True
            await wait_any(self.stopping, within_s=interval_s)

    # --- registration --------------------------------------------------------------------
    async def _renew(self, subject: str, _: RenewRequest) -> RenewReply:
        try:
            worker_id = UUID(subjects.worker_of_renewal(subject))
        except ValueError as e:
            raise ValidationError(f"{subject}: not a worker's renewal subject") from e
        return await handlers.renew(self.deps, worker_id)

    async def _register(self, request: RegisterRequest) -> RegisterReply:
        reply = await handlers.register(self.deps, request)
        await messaging.wake_scheduler(self.nc, request.worker_id)  # its job can go now
        return reply
