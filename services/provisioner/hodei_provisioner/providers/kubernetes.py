"""The Kubernetes provider: each worker is one bare Pod running the agent.

The pod (``hodei-worker-<worker id>``, ``restartPolicy: Never``) carries the labels
``hodei.managed=true``, ``hodei.worker_id``, ``hodei.job_id``, ``hodei.provider`` and
``hodei.provider_id``; only pods with this platform's provider id are ever listed or
touched. Its one-time token is in a Secret of the same name, owned by the pod (deleted with
it, and deleted by :meth:`destroy` too). The resource id is ``<namespace>/<pod name>``.

Calls to the API server are blocking HTTP requests of the official ``kubernetes`` client,
each made in a thread off the event loop. One watch per provider row (its namespace and
labels) follows its pods in a thread of its own (:mod:`kubernetes_watch`) and tells the
provisioner what each change means (:func:`kubernetes_pods.news_of`); a pod the scheduler
cannot place is failed from the reconciliation pass once its pending timeout is over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from uuid import UUID

import urllib3
from kubernetes import config
from kubernetes.client import ApiClient, Configuration, CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from hodei_common.contracts.providers import KubernetesSettings, ProviderSettings
from hodei_provisioner.providers import kubernetes_pods as pods
from hodei_provisioner.providers.base import (
    CannotStart,
    News,
    Provider,
    ProviderError,
    Resource,
    Verdict,
    WorkerSpec,
)
from hodei_provisioner.providers.kubernetes_watch import PodWatch

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"
DEFAULT_PENDING_TIMEOUT_S = 120.0
REQUEST_TIMEOUT = (5.0, 30.0)
# Refusals no retry would change: the worker cannot start, and neither could another.
PERMANENT = {400: "bad request", 403: "forbidden", 404: "not found", 422: "invalid"}
# What the provider asks of the API server in a provider's namespace, as RBAC (resource,
# verb) pairs: pods made, read, listed and watched (the pod watch), deleted; each worker's
# token Secret made, replaced (after a half-done create), patched (owned by its pod),
# deleted. The Helm chart's Role grants exactly these, and tests/deploy holds the calls in
# this module and kubernetes_watch, this list and the Role equal.
API_PERMISSIONS: tuple[tuple[str, str], ...] = (
    ("pods", "create"), ("pods", "delete"), ("pods", "get"), ("pods", "list"),
    ("pods", "watch"),
    ("secrets", "create"), ("secrets", "delete"), ("secrets", "patch"), ("secrets", "update"),
)
T = TypeVar("T")
ClientKey = tuple[str | None, str | None, bool]
# The client's methods, called with dict bodies and unparsed (``_preload_content=False``)
# responses: neither is what its annotations say, so it is used untyped.
Core = Any


class KubernetesProvider(Provider):
    """Workers as pods of the configured image in the provider's namespace."""

    kind: ClassVar[str] = "kubernetes"
    noun: ClassVar[str] = "pod"

    def __init__(self, *, env: Mapping[str, str] | None = None, grace_s: float = 10.0) -> None:
        self._env = dict(env or {})
        self._grace_s = grace_s
        self._clients: dict[ClientKey, Core] = {}
        self._watches: dict[str, tuple[tuple[ClientKey, str], PodWatch]] = {}
        self._lock = threading.Lock()
        self._told: dict[str, tuple[Verdict, str]] = {}  # pod -> the last news told
        # Pods it deleted itself: their deletion is no news (their workers were let go).
        self._deleting: set[str] = set()
        self._listener: tuple[asyncio.AbstractEventLoop, Callable[[News], None]] | None = None

    def describe(self, resource_id: str) -> None:
        return None  # the pod's watch tells its progress, maybe before its id is recorded

    def on_news(self, callback: Callable[[News], None]) -> None:
        self._listener = (asyncio.get_running_loop(), callback)

    async def create(self, spec: WorkerSpec) -> str:
        settings = _settings(spec.settings)
        if not spec.image:
            raise CannotStart(f"provider {spec.provider!r} has no worker image configured")
        resource_id = await self._call(self._create, spec, settings)
        self._watch(spec.scope, settings)
        return resource_id

    async def destroy(self, resource_id: str, *, worker_id: UUID,
                      settings: ProviderSettings | None = None) -> None:
        await self._call(self._destroy, resource_id, worker_id, _settings(settings))

    async def exists(self, resource_id: str, *, worker_id: UUID,
                     settings: ProviderSettings | None = None) -> bool:
        namespace, name = _split(resource_id)
        pod = await self._call(self._get, _settings(settings), namespace, name)
        if pod is None or pods.worker_of(pod) != worker_id:
            return False
        return pods.resource_of(namespace, pod).alive

    async def resources(self, scope: str, settings: ProviderSettings | None = None
                        ) -> list[Resource]:
        kube = _settings(settings)
        self._watch(scope, kube)
        listed = await self._call(self._list, kube, scope)
        namespace = kube.namespace or DEFAULT_NAMESPACE
        timeout_s = kube.pending_timeout_s or DEFAULT_PENDING_TIMEOUT_S
        for pod in listed:  # the watch sees no change of a pod left Pending: look here
            message = pods.unschedulable_message(pod)
            worker_id = pods.worker_of(pod)
            if message is not None and worker_id is not None \
                    and pods.pending_for_s(pod) > timeout_s:
                self._tell(News(worker_id=worker_id, verdict=Verdict.CANNOT_START,
                                reason=f"unschedulable: {message}"), pod["metadata"]["name"])
        return [pods.resource_of(namespace, pod) for pod in listed]

    async def close(self) -> None:
        # Pods keep running: each agent finishes its job; reconciliation finds the rest.
        with self._lock:
            watches = [watch for _, watch in self._watches.values()]
            self._watches.clear()
            clients = list(self._clients.values())
            self._clients.clear()
        for watch in watches:
            await asyncio.to_thread(watch.stop)
        for core in clients:
            await asyncio.to_thread(core.api_client.close)

    # --- watching -----------------------------------------------------------------------
    def _watch(self, scope: str, settings: KubernetesSettings) -> None:
        """Have one watch run on the scope's pods, where its settings now say they are."""
        namespace = settings.namespace or DEFAULT_NAMESPACE
        key = (_client_key(settings), namespace)
        with self._lock:
            running = self._watches.get(scope)
        if running is not None and running[0] == key:
            return
        core = self._core(settings)
        with self._lock:
            running = self._watches.get(scope)
            if running is not None and running[0] == key:
                return  # another thread started it meanwhile
            watch = PodWatch(core, namespace, pods.selector(scope), self._on_pod)
            self._watches[scope] = (key, watch)
        if running is not None:
            threading.Thread(target=running[1].stop, daemon=True).start()
        watch.start()

    def _on_pod(self, event: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        news = pods.news_of(event, pod)
        with self._lock:
            ours = name in self._deleting
            if event == "DELETED":  # the pod's last word: nothing more to remember of it
                self._deleting.discard(name)
                self._told.pop(name, None)
        if news is not None and not (ours and news.verdict is Verdict.LOST):
            self._tell(news, name, remember=event != "DELETED")

    def _tell(self, news: News, pod: str, *, remember: bool = True) -> None:
        """Hand news to the provisioner's loop, once per change (the watch repeats itself)."""
        said = (news.verdict, news.reason)
        with self._lock:
            if self._told.get(pod) == said:
                return
            if remember:
                self._told[pod] = said
        if self._listener is not None:
            loop, callback = self._listener
            loop.call_soon_threadsafe(callback, news)

    # --- in a thread --------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except ApiException as e:
            message = _explain(e)
            if e.status in PERMANENT:
                raise CannotStart(f"the cluster refused ({PERMANENT[e.status]}): "
                                  f"{message}") from e
            raise ProviderError(f"the Kubernetes API answered {e.status}: {message}") from e
        except (OSError, urllib3.exceptions.HTTPError) as e:
            raise ProviderError(f"cannot reach the Kubernetes API: {e}") from e

    def _core(self, settings: KubernetesSettings) -> Core:
        key = _client_key(settings)
        with self._lock:
            core = self._clients.get(key)
            if core is None:
                core = self._clients[key] = CoreV1Api(_api_client(settings))
            return core

    def _create(self, spec: WorkerSpec, settings: KubernetesSettings) -> str:
        core = self._core(settings)
        namespace = settings.namespace or DEFAULT_NAMESPACE
        name = pods.pod_name(spec.worker_id)
        secret = pods.secret_manifest(spec, settings)
        try:
            core.create_namespaced_secret(namespace, secret, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status != 409:
                raise
            # A create that died half way left it: the new token replaces the old one.
            core.replace_namespaced_secret(name, namespace, secret,
                                           _request_timeout=REQUEST_TIMEOUT)
        manifest = pods.pod_manifest(spec, settings, nats_url=spec.nats_url,
                                     env={**self._env, **spec.trace_env},
                                     grace_s=self._grace_s)
        try:
            response = core.create_namespaced_pod(namespace, manifest, _preload_content=False,
                                                  _request_timeout=REQUEST_TIMEOUT)
        except BaseException:
            self._delete_secret(core, namespace, name)
            raise
        pod = json.loads(response.data)
        try:
            core.patch_namespaced_secret(name, namespace, pods.owned_by(pod),
                                         _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:  # destroy deletes it anyway; only a crash would leave it
            log.warning("worker %s: secret %s not made the pod's (%s)", spec.worker_id, name,
                        _explain(e))
        log.info("worker %s: pod %s/%s created", spec.worker_id, namespace, name)
        return f"{namespace}/{name}"

    def _get(self, settings: KubernetesSettings, namespace: str, name: str
             ) -> dict[str, Any] | None:
        try:
            response = self._core(settings).read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        found: dict[str, Any] = json.loads(response.data)
        return found

    def _destroy(self, resource_id: str, worker_id: UUID, settings: KubernetesSettings) -> None:
        namespace, name = _split(resource_id)
        core = self._core(settings)
        pod = self._get(settings, namespace, name)
        if pod is not None and pods.worker_of(pod) != worker_id:
            log.warning("pod %s is not worker %s's; left alone", resource_id, worker_id)
            return
        if pod is not None:
            with self._lock:
                self._deleting.add(name)
            try:  # SIGTERM first: the agent ends its job before the pod goes
                core.delete_namespaced_pod(name, namespace,
                                           grace_period_seconds=max(1, round(self._grace_s)),
                                           _request_timeout=REQUEST_TIMEOUT)
                log.info("worker %s: pod %s deleted", worker_id, resource_id)
            except ApiException as e:
                if e.status != 404:
                    raise
        self._delete_secret(core, namespace, name)

    def _delete_secret(self, core: Core, namespace: str, name: str) -> None:
        try:
            core.delete_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status != 404:
                log.warning("secret %s/%s not deleted: %s", namespace, name, _explain(e))

    def _list(self, settings: KubernetesSettings, scope: str) -> list[dict[str, Any]]:
        response = self._core(settings).list_namespaced_pod(
            settings.namespace or DEFAULT_NAMESPACE, label_selector=pods.selector(scope),
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
        return items


def _settings(settings: ProviderSettings | None) -> KubernetesSettings:
    """The provider's settings (the provisioner loads them as KubernetesSettings)."""
    return settings if isinstance(settings, KubernetesSettings) else KubernetesSettings()


def _client_key(settings: KubernetesSettings) -> ClientKey:
    return settings.kubeconfig, settings.context, bool(settings.in_cluster)


def _api_client(settings: KubernetesSettings) -> ApiClient:
    """A client of the cluster the settings name: in-cluster, or a kubeconfig and context
    (neither: in-cluster inside a pod, else $KUBECONFIG or ~/.kube/config)."""
    in_cluster = settings.in_cluster or (
        settings.in_cluster is None and not settings.kubeconfig
        and "KUBERNETES_SERVICE_HOST" in os.environ)
    try:
        if in_cluster:
            configuration = Configuration()
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
            return ApiClient(configuration)
        path = str(Path(settings.kubeconfig).expanduser()) if settings.kubeconfig else None
        client: ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=path, context=settings.context)
        return client
    except (ConfigException, OSError, ValueError, TypeError) as e:
        where = "in-cluster configuration" if in_cluster else \
            f"kubeconfig {settings.kubeconfig or '(default)'}"
        raise CannotStart(f"cannot load the {where}: {str(e).strip() or type(e).__name__}"
                          ) from e


def _split(resource_id: str) -> tuple[str, str]:
    namespace, _, name = resource_id.rpartition("/")
    return namespace or DEFAULT_NAMESPACE, name


def _explain(e: ApiException) -> str:
    """The message of the API server's Status, else its reason; one line."""
    try:
        text = str(json.loads(e.body or "{}").get("message") or e.reason)
    except (ValueError, AttributeError):
        text = str(e.reason)
    return " ".join(text.split()) or f"HTTP {e.status}"
