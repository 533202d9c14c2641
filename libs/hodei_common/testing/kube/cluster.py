"""The control plane's behaviour behind the routes: defaulting, scheduling, deletion with a
grace period, garbage collection of owned objects, events, and the injected faults."""

from __future__ import annotations

import base64
import copy
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker

from hodei_common.testing.kube import validation
from hodei_common.testing.kube.errors import ApiError, bad_request, not_found
from hodei_common.testing.kube.kubelet import Kubelet, PodRun
from hodei_common.testing.kube.node import NODE_NAME, node_object, unschedulable
from hodei_common.testing.kube.pods import apply_defaults, set_condition
from hodei_common.testing.kube.store import Store, now

Obj = dict[str, Any]
NAMESPACED = ("pods", "secrets", "events")
KINDS = {"pods": "Pod", "secrets": "Secret", "events": "Event", "namespaces": "Namespace",
         "nodes": "Node"}


@dataclass
class Faults:
    """Failures the tests inject."""

    failing_creates: int = 0
    create_status: int = 500
    received: dict[str, list[Obj]] = field(default_factory=lambda: {"pods": [], "secrets": []})


class Cluster:
    """One node's cluster: the store, the scheduler's decision and the kubelet."""

    def __init__(self, engine: docker.DockerClient, instance: str,
                 capacity: dict[str, str]) -> None:
        self.store = Store()
        self.faults = Faults()
        self.kubelet = Kubelet(self, engine, instance)
        version = str(engine.version().get("Version", "unknown"))
        self.store.create("nodes", node_object(capacity, version))
        self.create_namespace({"metadata": {"name": "default"}})

    # --- namespaces -----------------------------------------------------------------------
    def create_namespace(self, body: Obj) -> Obj:
        validation.check_namespace(body)
        ns = _fresh(body, "Namespace")
        ns["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = \
            ns["metadata"]["name"]
        ns["spec"] = {"finalizers": ["kubernetes"]}
        ns["status"] = {"phase": "Active"}
        return self.store.create("namespaces", ns)

    def require_namespace(self, namespace: str) -> None:
        if self.store.find("namespaces", "", namespace) is None:
            raise not_found("namespaces", namespace)

    async def delete_namespace(self, name: str) -> Obj:
        """Remove a namespace with everything in it at once (no Terminating phase)."""
        ns = self.store.get("namespaces", "", name)
        for pod in list(self.store.items("pods", name)):
            await self.delete_pod(name, pod["metadata"]["name"], 0)
        for kind in ("secrets", "events"):
            for obj in list(self.store.items(kind, name)):
                self.store.remove(kind, name, obj["metadata"]["name"])
        self.store.remove("namespaces", "", name)
        return ns

    # --- pods -----------------------------------------------------------------------------
    def create(self, kind: str, namespace: str, body: Obj) -> Obj:
        """Create a namespaced object as POSTed: checked, defaulted, then acted on."""
        if kind in self.faults.received:
            self.faults.received[kind].append(copy.deepcopy(body))
        if kind == "pods" and self.faults.failing_creates > 0:
            self.faults.failing_creates -= 1
            code = self.faults.create_status
            raise ApiError(code, "InternalError" if code >= 500 else "BadRequest",
                           f"injected failure of a pod create ({code})",
                           {"causes": [{"message": "injected by the stand-in"}]})
        self.require_namespace(namespace)
        meta = body.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        meta["namespace"] = namespace
        if kind == "pods":
            return self._create_pod(body)
        if kind == "secrets":
            body = normalise_secret(body)
            validation.check_secret(body)
        return self.store.create(kind, _fresh(body, KINDS[kind]))

    def _create_pod(self, body: Obj) -> Obj:
        validation.check_pod(body)
        pod = _fresh(body, "Pod")
        apply_defaults(pod)
        pod = self.store.create("pods", pod)
        if pod["spec"].get("nodeName"):
            self._bound(pod)
        elif pod["spec"]["schedulerName"] == "default-scheduler":
            self._schedule(pod)
        return self.store.get("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])

    def _schedule(self, pod: Obj) -> None:
        why = unschedulable(pod, self.store.get("nodes", "", NODE_NAME))
        if why is not None:
            set_condition(pod, "PodScheduled", False, "Unschedulable", why)
            self.store.update("pods", pod)
            self.record(pod, "Warning", "FailedScheduling", why, "default-scheduler")
            return
        self.bind(pod, NODE_NAME)

    def bind(self, pod: Obj, node: str) -> None:
        """Bind ``pod`` to ``node`` (the scheduler's or a client's Binding)."""
        if pod["spec"].get("nodeName"):
            raise ApiError(409, "Conflict", f'pod {pod["metadata"]["name"]} is already '
                           f'assigned to node "{pod["spec"]["nodeName"]}"')
        pod["spec"]["nodeName"] = node
        set_condition(pod, "PodScheduled", True)
        pod = self.store.update("pods", pod)
        meta = pod["metadata"]
        self.record(pod, "Normal", "Scheduled", f"Successfully assigned {meta['namespace']}/"
                    f"{meta['name']} to {node}", "default-scheduler")
        self._bound(pod)

    def _bound(self, pod: Obj) -> None:
        if pod["spec"]["nodeName"] == NODE_NAME:
            self.kubelet.admit(pod)

    async def delete_pod(self, namespace: str, name: str, grace_s: int | None) -> Obj:
        """Delete a pod: at once when nothing runs, else marked and left to the kubelet."""
        pod = self.store.get("pods", namespace, name)
        meta = pod["metadata"]
        if grace_s is None:
            grace_s = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        if meta.get("deletionTimestamp"):
            return pod
        if self.kubelet.stop_pod(meta["uid"], grace_s):
            meta.update(deletionTimestamp=now(), deletionGracePeriodSeconds=grace_s)
            return self.store.update("pods", pod)
        return self._remove_pod(pod)

    def finish_delete(self, run: PodRun) -> None:
        pod = self.store.find("pods", run.namespace, run.name)
        self.kubelet.forget(run)
        if pod is not None and pod["metadata"]["uid"] == run.uid:
            self._remove_pod(pod)

    def _remove_pod(self, pod: Obj) -> Obj:
        meta = pod["metadata"]
        gone = self.store.remove("pods", meta["namespace"], meta["name"])
        run = self.kubelet.runs.get(meta["uid"])
        if run is not None:
            self.kubelet.forget(run)
        self._collect(meta["namespace"], meta["uid"])
        return gone

    def _collect(self, namespace: str, uid: str) -> None:
        """Delete what the removed object owned, as the garbage collector does."""
        for kind in ("secrets", "pods"):
            for obj in list(self.store.items(kind, namespace)):
                owners = obj["metadata"].get("ownerReferences") or []
                if any(owner.get("uid") == uid for owner in owners):
                    if kind == "pods":
                        self.kubelet.stop_pod(obj["metadata"]["uid"], 0)
                        self._remove_pod(obj)
                    else:
                        self.store.remove(kind, namespace, obj["metadata"]["name"])

    def evict(self, namespace: str, name: str) -> Obj:
        """What a kubelet eviction does: the container killed, the pod kept, Failed."""
        pod = self.store.get("pods", namespace, name)
        run = self.kubelet.runs.get(pod["metadata"]["uid"])
        message = "The node was low on resource: memory. Threshold quantity: 100Mi, " \
                  "available: 0Ki (evicted by the stand-in). "
        if run is None:
            raise bad_request(f'pod "{name}" is not running on the node')
        self.kubelet.end(run, "Evicted", message, "TerminationByKubelet", grace_s=0)
        return self.store.get("pods", namespace, name)

    # --- what the kubelet calls -----------------------------------------------------------
    def update_pod(self, run: PodRun, change: Callable[[Obj], None]) -> Obj | None:
        pod = self.store.find("pods", run.namespace, run.name)
        if pod is None or pod["metadata"]["uid"] != run.uid:
            return None
        before = copy.deepcopy(pod)
        change(pod)
        return pod if pod == before else self.store.update("pods", pod)

    def secret(self, namespace: str, name: str) -> Obj | None:
        return self.store.find("secrets", namespace, name)

    def record(self, obj: Obj, type_: str, reason: str, message: str, component: str) -> None:
        """Record a core/v1 Event about ``obj``."""
        meta = obj["metadata"]
        stamp = now()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                         "namespace": meta.get("namespace") or "default"},
            "involvedObject": {"kind": obj.get("kind", "Pod"), "apiVersion": "v1",
                               "namespace": meta.get("namespace", ""), "name": meta["name"],
                               "uid": meta.get("uid", ""),
                               "resourceVersion": meta.get("resourceVersion", "")},
            "reason": reason, "message": message, "type": type_, "count": 1,
            "source": {"component": component, "host": NODE_NAME},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": None,
            "reportingComponent": component, "reportingInstance": NODE_NAME,
        }
        self.store.create("events", event)


def _fresh(body: Obj, kind: str) -> Obj:
    """A copy of a POSTed object with only what the client may set in its metadata."""
    obj = copy.deepcopy(body)
    obj["apiVersion"], obj["kind"] = "v1", kind
    meta = obj.setdefault("metadata", {})
    for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                "deletionGracePeriodSeconds", "generation", "selfLink"):
        meta.pop(key, None)
    return obj


def normalise_secret(secret: Obj) -> Obj:
    """Fold ``stringData`` into ``data`` (base64) and default the type."""
    secret = copy.deepcopy(secret)
    strings = secret.pop("stringData", None) or {}
    data = secret.setdefault("data", {})
    for key, value in strings.items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if not data:
        secret.pop("data")
    secret.setdefault("type", "Opaque")
    return secret
