"""Pod defaulting and the pieces of a pod's status the scheduler and kubelet write."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hodei_common.testing.kube import quantity
from hodei_common.testing.kube.store import now

Obj = dict[str, Any]
HOST_IP = "127.0.0.1"
TERMINAL = ("Succeeded", "Failed")


def apply_defaults(pod: Obj) -> None:
    """Fill what the real server's defaulting fills for the fields a provider leaves out."""
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("tolerations", [
        {"key": f"node.kubernetes.io/{taint}", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 300} for taint in ("not-ready", "unreachable")])
    for container in spec.get("containers") or []:
        container.setdefault("imagePullPolicy",
                             "Always" if container["image"].endswith(":latest")
                             or ":" not in container["image"].rsplit("/", 1)[-1] else
                             "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        resources = container.setdefault("resources", {})
        # Requests left out default to the limits, as the real server defaults them.
        if resources.get("limits"):
            requests = resources.setdefault("requests", {})
            for resource, amount in resources["limits"].items():
                requests.setdefault(resource, amount)
    pod["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}


def qos_class(spec: Obj) -> str:
    """Guaranteed, Burstable or BestEffort, from the containers' requests and limits."""
    containers = spec.get("containers") or []
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    for r in resources:
        limits, requests = r.get("limits") or {}, r.get("requests") or {}
        if any(limits.get(k) is None or quantity.parse(limits[k]) != quantity.parse(v)
               for k, v in requests.items()) or not {"cpu", "memory"} <= limits.keys():
            return "Burstable"
    return "Guaranteed"


def requests(pod: Obj) -> dict[str, Decimal]:
    """The pod's summed container requests, per resource."""
    total: dict[str, Decimal] = {}
    for container in pod["spec"].get("containers") or []:
        for resource, amount in ((container.get("resources") or {}).get("requests")
                                 or {}).items():
            total[resource] = total.get(resource, Decimal(0)) + quantity.parse(amount)
    return total


def set_condition(pod: Obj, type_: str, status: bool, reason: str | None = None,
                  message: str | None = None) -> None:
    """Set one condition, keeping its transition time when its status does not change."""
    conditions = pod["status"].setdefault("conditions", [])
    text = "True" if status else "False"
    for condition in conditions:
        if condition["type"] == type_:
            if condition["status"] != text:
                condition["lastTransitionTime"] = now()
            condition.update(status=text)
            break
    else:
        condition = {"type": type_, "status": text, "lastProbeTime": None,
                     "lastTransitionTime": now()}
        conditions.append(condition)
    for key, value in (("reason", reason), ("message", message)):
        if value is None:
            condition.pop(key, None)
        else:
            condition[key] = value


def set_readiness(pod: Obj, ready: bool, reason: str | None = None) -> None:
    """The Ready and ContainersReady conditions, as the kubelet words them."""
    names = [c["name"] for c in pod["spec"]["containers"][:1]]
    message = None if ready or reason == "PodCompleted" else \
        f"containers with unready status: [{' '.join(names)}]"
    for type_ in ("ContainersReady", "Ready"):
        set_condition(pod, type_, ready, None if ready else reason, message)


def container_status(pod: Obj, state: Obj, *, container_id: str | None = None,
                     image_id: str = "", ready: bool = False, started: bool = False) -> Obj:
    """A complete status of the pod's first (the only run) container."""
    container = pod["spec"]["containers"][0]
    status: Obj = {
        "name": container["name"], "image": container["image"], "imageID": image_id,
        "ready": ready, "restartCount": 0, "started": started, "state": state,
        "lastState": {},
    }
    if container_id is not None:
        status["containerID"] = f"docker://{container_id}"
    return status


def waiting(reason: str, message: str | None = None) -> Obj:
    state: Obj = {"reason": reason}
    if message is not None:
        state["message"] = message
    return {"waiting": state}
