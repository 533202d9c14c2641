"""The Docker provider: each worker is a container of the worker image running the agent.

Containers carry labels: ``hodei.managed=true`` (only such containers are ever touched),
``hodei.worker_id``, ``hodei.job_id`` (the job the worker was requested for, when there is
one), ``hodei.provider`` and ``hodei.provider_id`` (the provider_configs row, so that two
platforms sharing one engine never reconcile each other's containers). The resource id is
the container id. Every call to the engine is a blocking HTTP request made by the ``docker``
SDK, so each runs in a thread, off the event loop.

A container runs its agent as root with every capability dropped but ``AGENT_CAPABILITIES``
and no way to gain privileges (``no-new-privileges``): just what the agent needs to run its
job as the image's job user (uid 10001), who then has no capability and cannot read or
signal the agent. The root filesystem stays writable: the job user can write nothing of the
agent's there anyway, and jobs expect a usual system (``/tmp``, its home).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from hodei_common.contracts.agent import AGENT_CAPABILITIES, JOB_USER
from hodei_common.contracts.providers import DockerSettings, ProviderSettings
from hodei_common.tracing import AGENT_ENV
from hodei_provisioner.providers.base import (
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_PROVIDER,
    LABEL_PROVIDER_ID,
    LABEL_WORKER,
    CannotStart,
    Provider,
    ProviderError,
    Resource,
    WorkerSpec,
)

log = logging.getLogger(__name__)

DEFAULT_NETWORK_MODE = "host"
# Root, whatever the image says: only root can start the job as its own user.
AGENT_USER = "0:0"
CONTAINER_PREFIX = "hodei-worker-"
API_VERSION = "1.41"

T = TypeVar("T")
# Variables of the service's environment a container's agent gets (the rest stays behind).
CONTAINER_ENV = ("HODEI_LOG_LEVEL", "HODEI_LOG_FORMAT", "TZ", *AGENT_ENV)


def container_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` an agent in a container may see."""
    return {key: environ[key] for key in CONTAINER_ENV if key in environ}


class DockerProvider(Provider):
    """Workers as containers of the configured image on one Docker engine."""

    kind: ClassVar[str] = "docker"
    noun: ClassVar[str] = "container"

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        stop_grace_s: float = 2.0,
        client_factory: Callable[[], docker.DockerClient] | None = None,
    ) -> None:
        self._env = dict(env or {})
        self._stop_grace_s = stop_grace_s
        self._client_factory = client_factory or _default_client
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()

    async def create(self, spec: WorkerSpec) -> str:
        if not spec.image:
            raise ProviderError(f"provider {spec.provider!r} has no worker image configured")
        return await self._call(self._create, spec)

    async def destroy(self, resource_id: str, *, worker_id: UUID,
                      settings: ProviderSettings | None = None) -> None:
        await self._call(self._destroy, resource_id, worker_id)

    async def exists(self, resource_id: str, *, worker_id: UUID,
                     settings: ProviderSettings | None = None) -> bool:
        found = await self._call(self._inspect, resource_id)
        if found is None or _labels(found).get(LABEL_WORKER) != str(worker_id):
            return False
        return bool(found["State"].get("Running"))

    def describe(self, resource_id: str) -> str:
        return f"container {resource_id[:12]} started"

    async def resources(self, scope: str, settings: ProviderSettings | None = None
                        ) -> list[Resource]:
        return await self._call(self._resources, scope)

    async def close(self) -> None:
        # Containers keep running: each agent finishes its job; reconciliation finds the rest.
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    # --- in a thread ---------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except ImageNotFound as e:
            raise CannotStart(
                f"worker image not found ({_explain(e)}): build it with `hodei worker "
                f"build-image` or set the provider's image") from e
        except DockerException as e:
            raise ProviderError(f"the Docker engine refused: {_explain(e)}") from e

    def _api(self) -> Any:
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = self._client_factory()
                except DockerException as e:
                    raise ProviderError(f"cannot reach the Docker engine: {_explain(e)}") from e
            return self._client.api

    def _create(self, spec: WorkerSpec) -> str:
        api = self._api()
        labels = {
            LABEL_MANAGED: "true",
            LABEL_WORKER: str(spec.worker_id),
            LABEL_PROVIDER: spec.provider,
            LABEL_PROVIDER_ID: spec.scope,
        }
        if spec.job_id is not None:
            labels[LABEL_JOB] = str(spec.job_id)
        limits: dict[str, Any] = {}
        if spec.memory_bytes is not None:
            # The same swap limit: a job over its memory is killed rather than swapped.
            limits.update(mem_limit=spec.memory_bytes, memswap_limit=spec.memory_bytes)
        if spec.cpus is not None:
            limits["nano_cpus"] = round(spec.cpus * 1e9)
        # The provisioner loads a docker provider's settings as DockerSettings; a spec made
        # without them has the defaults.
        settings = spec.settings if isinstance(spec.settings, DockerSettings) \
            else DockerSettings()
        network_mode = settings.network_mode or DEFAULT_NETWORK_MODE
        host_config = api.create_host_config(
            network_mode=network_mode, cap_drop=["ALL"], cap_add=list(AGENT_CAPABILITIES),
            security_opt=["no-new-privileges"], **limits)
        environment = {
            **self._env,
            "HODEI_NATS_URL": spec.nats_url,
            "HODEI_WORKER_ID": str(spec.worker_id),
            "HODEI_AGENT_JOB_USER": JOB_USER,
            **spec.trace_env,
            **spec.secrets(),
        }
        container = api.create_container(
            spec.image, name=f"{CONTAINER_PREFIX}{spec.worker_id}", labels=labels,
            environment=environment, host_config=host_config, detach=True, user=AGENT_USER,
        )
        container_id = str(container["Id"])
        try:
            api.start(container_id)
        except BaseException:
            self._remove(container_id)
            raise
        log.info("worker %s: container %s started", spec.worker_id, container_id[:12])
        return container_id

    def _inspect(self, container_id: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._api().inspect_container(container_id)
        except NotFound:
            return None
        return found

    def _destroy(self, container_id: str, worker_id: UUID) -> None:
        found = self._inspect(container_id)
        if found is None:
            return  # already gone: done
        labels = _labels(found)
        if labels.get(LABEL_MANAGED) != "true" or labels.get(LABEL_WORKER) != str(worker_id):
            log.warning("container %s is not worker %s's; left alone", container_id[:12],
                        worker_id)
            return
        if found["State"].get("Running"):
            try:  # SIGTERM first: an agent cancels its job and reports it before it exits
                self._api().stop(container_id, timeout=max(1, round(self._stop_grace_s)))
            except NotFound:
                return
        self._remove(container_id)
        log.info("worker %s: container %s removed", worker_id, container_id[:12])

    def _remove(self, container_id: str) -> None:
        try:
            self._api().remove_container(container_id, force=True)
        except NotFound:
            pass
        except APIError as e:
            if e.status_code != 409:  # 409: its removal is already under way
                raise

    def _resources(self, scope: str) -> list[Resource]:
        api = self._api()
        listed = api.containers(all=True, filters={
            "label": [f"{LABEL_MANAGED}=true", f"{LABEL_PROVIDER_ID}={scope}"]})
        found = []
        for entry in listed:
            try:
                worker_id = UUID(entry["Labels"].get(LABEL_WORKER, ""))
            except ValueError:
                worker_id = None
            if entry.get("State") == "running":
                found.append(Resource(resource_id=entry["Id"], worker_id=worker_id, alive=True))
                continue
            state = (self._inspect(entry["Id"]) or {}).get("State", {})
            found.append(Resource(
                resource_id=entry["Id"], worker_id=worker_id, alive=False,
                exit_code=state.get("ExitCode"), oom_killed=bool(state.get("OOMKilled")),
                ended_at=_timestamp(state.get("FinishedAt")),
            ))
        return found


def _default_client() -> docker.DockerClient:
    # A fixed API version (Docker 20.10's; later engines still speak it): no round trip to
    # ask the engine's version before the first real call.
    return docker.from_env(version=API_VERSION)


def _labels(container: Mapping[str, Any]) -> dict[str, str]:
    return dict(container.get("Config", {}).get("Labels") or {})


def _timestamp(value: object) -> datetime | None:
    """Docker's RFC 3339 UTC time (with nanoseconds); None for its zero time or garbage."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(value[:19]).replace(tzinfo=UTC)
    except ValueError:
        return None


def _explain(e: DockerException) -> str:
    """One line from a docker SDK error (an APIError's explanation is the engine's words)."""
    if isinstance(e, APIError) and e.explanation:
        text = str(e.explanation)
    else:
        text = str(e) or type(e).__name__
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__
