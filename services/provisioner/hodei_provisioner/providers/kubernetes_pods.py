"""A worker's Pod and Secret as Kubernetes manifests, and a pod's state in Hodei's words.

Pure functions over plain dicts (what the API server sends and takes), so that what the
provider sends can be checked against Kubernetes' schemas, and what it concludes from a
pod can be read in one place:

======================================================  =====================================
pod                                                     the platform
======================================================  =====================================
Pending (scheduling, ContainerCreating, Unschedulable)  progress noted; worker stays CREATING
ErrImagePull, ImagePullBackOff, InvalidImageName,       cannot start: worker and job FAILED
CreateContainerConfigError, CreateContainerError        at once (another pod would fail too)
Unschedulable past the pending timeout                  cannot start (checked by the provider)
Running                                                 progress noted
terminated (Completed, Error, OOMKilled)                ended: as an agent's exit code
Evicted, DisruptionTarget, being deleted, deleted       lost: the job is requeued
DeadlineExceeded (activeDeadlineSeconds)                timed out
======================================================  =====================================

The agent's container runs as root, with every capability dropped but ``AGENT_CAPABILITIES``
(SETUID, SETGID, KILL to run and stop its job as the image's job user, uid 10001; CHOWN and
DAC_OVERRIDE for the job's working directory), no privilege escalation and seccomp
``RuntimeDefault``. The job, not the agent, is the untrusted code: run as another user than
the agent, it cannot read the agent's environment (its token), signal it or read its files,
which a pod running both as 10001 allowed. Pod Security ``baseline`` admits such a pod (those
capabilities are on its list); ``restricted`` would not (it demands a non-root user and no
capability but NET_BIND_SERVICE), so the workers' namespace may enforce ``baseline`` at most.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from hodei_common.contracts.agent import AGENT_CAPABILITIES, JOB_USER
from hodei_common.contracts.providers import KubernetesSettings
from hodei_provisioner.providers.base import (
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_PROVIDER,
    LABEL_PROVIDER_ID,
    LABEL_WORKER,
    OOM_KILLED,
    SECRET_ENV,
    News,
    Resource,
    Verdict,
    WorkerSpec,
)

POD_PREFIX = "hodei-worker-"
CONTAINER = "agent"
# The agent's user: root (with AGENT_CAPABILITIES only), so that it can run its job as the
# image's job user.
AGENT_UID = 0
# An ephemeral pod's deadline past its job's timeout: time to start, report and leave.
DEADLINE_GRACE_S = 60.0
IMAGE_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                          "ErrImageNeverPull"})
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
Pod = Mapping[str, Any]
# A DisruptionTarget condition's reasons (Kubernetes 1.26+), in words.
DISRUPTIONS = {
    "TerminationByKubelet": "evicted by its node",
    "EvictionByEvictionAPI": "evicted",
    "PreemptionByScheduler": "preempted",
    "DeletionByTaintManager": "deleted: its node is lost or tainted",
    "DeletionByPodGC": "deleted: its node is gone",
}


def pod_name(worker_id: UUID) -> str:
    return f"{POD_PREFIX}{worker_id}"


def selector(scope: str) -> str:
    """The label selector of every pod made for a provider_configs row."""
    return f"{LABEL_MANAGED}=true,{LABEL_PROVIDER_ID}={scope}"


def labels(spec: WorkerSpec, settings: KubernetesSettings) -> dict[str, str]:
    """The operator's labels, then the platform's own (which they cannot replace)."""
    own = {LABEL_MANAGED: "true", LABEL_WORKER: str(spec.worker_id),
           LABEL_PROVIDER: spec.provider, LABEL_PROVIDER_ID: spec.scope}
    if spec.job_id is not None:
        own[LABEL_JOB] = str(spec.job_id)
    return {**(settings.labels or {}), **own}


def secret_manifest(spec: WorkerSpec, settings: KubernetesSettings) -> dict[str, Any]:
    """The Secret holding the worker's one-time token and bootstrap credentials (its pod
    reads them as env vars)."""
    values = {key: value for key, value in (("token", spec.token),
                                             ("creds", spec.bootstrap_creds)) if value}
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": pod_name(spec.worker_id), "labels": labels(spec, settings)},
        "data": {key: base64.b64encode(value.encode()).decode()
                 for key, value in values.items()},
    }


def owned_by(pod: Pod) -> dict[str, Any]:
    """A patch making an object the pod's: it is deleted with the pod."""
    meta = pod["metadata"]
    return {"metadata": {"ownerReferences": [
        {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}]}}


def pod_manifest(spec: WorkerSpec, settings: KubernetesSettings, *, nats_url: str,
                 env: Mapping[str, str], grace_s: float) -> dict[str, Any]:
    """One bare pod running the agent: restartPolicy Never, locked down, limits as asked."""
    name = pod_name(spec.worker_id)
    variables: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    variables += [
        {"name": "HODEI_NATS_URL", "value": settings.agent_nats_url or nats_url},
        {"name": "HODEI_WORKER_ID", "value": str(spec.worker_id)},
        # A pod's SIGTERM is the node taking it away: its job runs again elsewhere.
        {"name": "HODEI_AGENT_ON_SIGTERM", "value": "abandon"},
        {"name": "HODEI_AGENT_JOB_USER", "value": JOB_USER},
    ]
    variables += [{"name": SECRET_ENV[key], "valueFrom": {"secretKeyRef": {"name": name,
                                                                          "key": key}}}
                  for key in ("token", "creds") if key == "token" or spec.bootstrap_creds]
    container: dict[str, Any] = {
        "name": CONTAINER, "image": spec.image, "env": variables,
        "resources": _resources(spec),
        "securityContext": {
            "allowPrivilegeEscalation": False, "privileged": False,
            "capabilities": {"drop": ["ALL"], "add": list(AGENT_CAPABILITIES)},
            "runAsNonRoot": False, "runAsUser": AGENT_UID, "runAsGroup": AGENT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if settings.image_pull_policy is not None:
        container["imagePullPolicy"] = settings.image_pull_policy.value
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": max(1, math.ceil(grace_s)),
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    if spec.job_timeout_s is not None:
        pod_spec["activeDeadlineSeconds"] = math.ceil(spec.job_timeout_s + DEADLINE_GRACE_S)
    optional: dict[str, Any] = {
        "serviceAccountName": settings.service_account,
        "nodeSelector": settings.node_selector,
        "tolerations": [{k: str(v) for k, v in _toleration(t).items()}
                        for t in settings.tolerations or []] or None,
        "priorityClassName": settings.priority_class,
        "imagePullSecrets": [{"name": s} for s in settings.image_pull_secrets or []] or None,
    }
    pod_spec.update({k: v for k, v in optional.items() if v})
    if settings.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    metadata: dict[str, Any] = {"name": name, "labels": labels(spec, settings)}
    if settings.annotations:
        metadata["annotations"] = dict(settings.annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def _toleration(t: Any) -> dict[str, object]:
    found = {"key": t.key, "operator": t.operator, "value": t.value,
             "effect": t.effect.value if t.effect else None}
    return {k: v for k, v in found.items() if v is not None}


def _resources(spec: WorkerSpec) -> dict[str, Any]:
    """The job's limits as both requests and limits (a Guaranteed pod when both are set)."""
    amounts: dict[str, str] = {}
    if spec.cpus is not None:
        amounts["cpu"] = f"{max(1, round(spec.cpus * 1000))}m"
    if spec.memory_bytes is not None:
        amounts["memory"] = str(spec.memory_bytes)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


# --- a pod's state -------------------------------------------------------------------------
def worker_of(pod: Pod) -> UUID | None:
    try:
        return UUID(pod.get("metadata", {}).get("labels", {}).get(LABEL_WORKER, ""))
    except ValueError:
        return None


def news_of(event: str, pod: Pod) -> News | None:
    """What a watch event of the pod means for its worker; None for a pod not a worker's."""
    worker_id = worker_of(pod)
    if worker_id is None:
        return None
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    state = _container_state(status)
    terminated, waiting = state.get("terminated"), state.get("waiting")

    def tell(verdict: Verdict, reason: str, **more: Any) -> News:
        return News(worker_id=worker_id, verdict=verdict, reason=reason, **more)

    if event == "DELETED" and not (terminated and terminated.get("exitCode") == 0):
        return tell(Verdict.LOST, f"its pod {name} was deleted")
    disrupted = _disruption(status)
    if disrupted is not None:
        return tell(Verdict.LOST, f"its pod {name} was {disrupted}")
    if status.get("reason") == "DeadlineExceeded":
        return tell(Verdict.TIMED_OUT, f"its pod {name} ran past its activeDeadlineSeconds")
    if pod["metadata"].get("deletionTimestamp") and not terminated:
        return tell(Verdict.LOST, f"its pod {name} is being deleted")
    if terminated is not None or phase in ("Succeeded", "Failed"):
        code = int((terminated or {}).get("exitCode", 1 if phase == "Failed" else 0))
        why = (terminated or {}).get("reason") or status.get("reason") or phase
        return tell(Verdict.ENDED, f"its pod {name} ended: {why}, exit code {code}",
                    exit_code=code, oom_killed=why == OOM_KILLED)
    if waiting and waiting.get("reason") in IMAGE_ERRORS | CONFIG_ERRORS:
        return tell(Verdict.CANNOT_START, _cannot_start(pod, waiting))
    if phase == "Running":
        return tell(Verdict.PROGRESS, f"pod {name} Running on {pod['spec'].get('nodeName')}")
    unschedulable = unschedulable_message(pod)
    if unschedulable is not None:
        return tell(Verdict.PROGRESS, f"pod {name} Pending: Unschedulable: {unschedulable}")
    detail = f": {waiting['reason']}" if waiting and waiting.get("reason") else ""
    return tell(Verdict.PROGRESS, f"pod {name} Pending{detail}")


def unschedulable_message(pod: Pod) -> str | None:
    """The scheduler's words when it cannot place the pod; None when it can (or did)."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"):
            return str(condition.get("message") or "no node can take it")
    return None


def pending_for_s(pod: Pod, now: datetime | None = None) -> float:
    created = pod["metadata"].get("creationTimestamp")
    if not created:
        return 0.0
    at = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    return ((now or datetime.now(UTC)) - at).total_seconds()


def resource_of(namespace: str, pod: Pod) -> Resource:
    """The pod as reconciliation sees it: alive while Pending or Running and not deleted."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    terminated = _container_state(status).get("terminated") or {}
    deleting = bool(pod["metadata"].get("deletionTimestamp"))
    alive = phase in ("Pending", "Running") and not deleting and not terminated
    reason = (terminated.get("reason") or status.get("reason")
              or ("being deleted" if deleting else None))
    finished = terminated.get("finishedAt")
    return Resource(
        resource_id=f"{namespace}/{pod['metadata']['name']}", worker_id=worker_of(pod),
        alive=alive, exit_code=terminated.get("exitCode"),
        oom_killed=terminated.get("reason") == OOM_KILLED,
        ended_at=datetime.fromisoformat(finished.replace("Z", "+00:00")) if finished else None,
        reason=None if alive else reason)


def _container_state(status: Mapping[str, Any]) -> dict[str, Any]:
    for container in status.get("containerStatuses") or []:
        if container.get("name") == CONTAINER:
            return dict(container.get("state") or {})
    return {}


def _disruption(status: Mapping[str, Any]) -> str | None:
    """How the pod was taken away (evicted, preempted, its node lost), or None."""
    if status.get("reason") == "Evicted":
        return f"evicted: {status.get('message') or 'by its node'}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            reason = str(condition.get("reason") or "")
            how = DISRUPTIONS.get(reason, f"taken away ({reason or 'disrupted'})")
            return f"{how}: {condition.get('message') or reason or 'no reason given'}"
    return None


def _cannot_start(pod: Pod, waiting: Mapping[str, Any]) -> str:
    reason, message = waiting.get("reason"), waiting.get("message") or ""
    image = pod["spec"]["containers"][0].get("image")
    if reason == "InvalidImageName":
        return f"invalid image name: {image} ({message})"
    if reason in IMAGE_ERRORS:
        return f"image not found: {image} ({reason}: {message})"
    return f"cannot start the worker's container ({reason}): {message}"
