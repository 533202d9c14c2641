"""The one node, a complete object, and the scheduler's decision for a pod against it.

The scheduler checks each pod on its own against the node's allocatable resources and labels;
it does not add up the pods already running there, nor look at affinity, taints or ports.
"""

from __future__ import annotations

import platform
import uuid
from typing import Any

from hodei_common.testing.kube import quantity
from hodei_common.testing.kube.pods import HOST_IP, requests
from hodei_common.testing.kube.store import now

Obj = dict[str, Any]
NODE_NAME = "standin-node"
KUBELET_VERSION = "v1.32.0-standin"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def _machine_id() -> str:
    try:
        with open("/etc/machine-id") as f:
            return f.read().strip() or uuid.uuid4().hex
    except OSError:
        return uuid.uuid4().hex


def node_object(capacity: dict[str, str], runtime_version: str) -> Obj:
    """The node as the kubelet registers it, ready, with ``capacity`` all allocatable."""
    stamp = now()
    arch = _ARCH.get(platform.machine(), platform.machine())
    conditions = [
        {"type": type_, "status": "False", "reason": f"KubeletHasSufficient{what}",
         "message": f"kubelet has sufficient {what.lower()} available"}
        for type_, what in (("MemoryPressure", "Memory"), ("DiskPressure", "Disk"),
                            ("PIDPressure", "PID"))
    ] + [{"type": "Ready", "status": "True", "reason": "KubeletReady",
          "message": "kubelet is posting ready status"}]
    for condition in conditions:
        condition.update(lastHeartbeatTime=stamp, lastTransitionTime=stamp)
    labels = {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": arch, "beta.kubernetes.io/os": "linux",
              "beta.kubernetes.io/arch": arch}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": labels, "annotations": {}},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {
            "capacity": dict(capacity), "allocatable": dict(capacity),
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": HOST_IP},
                          {"type": "Hostname", "address": NODE_NAME}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": _machine_id(), "systemUUID": str(uuid.uuid4()),
                "bootID": str(uuid.uuid4()), "kernelVersion": platform.release(),
                "osImage": "Hodei Kubernetes stand-in", "operatingSystem": "linux",
                "architecture": arch, "containerRuntimeVersion": f"docker://{runtime_version}",
                "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
            },
            "images": [],
        },
    }


def unschedulable(pod: Obj, node: Obj) -> str | None:
    """Why ``pod`` cannot run on ``node``, as the scheduler says it; None when it fits."""
    reasons = []
    labels = node["metadata"].get("labels") or {}
    selector = pod["spec"].get("nodeSelector") or {}
    if any(labels.get(key) != value for key, value in selector.items()):
        reasons.append("1 node(s) didn't match Pod's node affinity/selector")
    allocatable = node["status"]["allocatable"]
    for resource, amount in sorted(requests(pod).items()):
        if resource in allocatable and amount > quantity.parse(allocatable[resource]):
            reasons.append(f"1 Insufficient {resource}")
    if not reasons:
        return None
    return f"0/1 nodes are available: {', '.join(reasons)}. preemption: 0/1 nodes are " \
           f"available: 1 Preemption is not helpful for scheduling."
