"""What the Kubernetes provider sends (a worker's pod) and what it reads in a pod's state."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import kubernetes_validate
import pytest

from hodei_common.contracts.providers import validate_settings
from hodei_common.contracts.workers import WorkerMode
from hodei_provisioner.providers import News, Verdict, WorkerSpec
from hodei_provisioner.providers import kubernetes_pods as pods

WORKER = uuid4()
NAME = f"hodei-worker-{WORKER}"


def spec(**settings: Any) -> tuple[WorkerSpec, Any]:
    kube = validate_settings("kubernetes", settings)
    return WorkerSpec(worker_id=WORKER, token="s3cret-token", nats_url="nats://10.0.0.1:4222",
                      mode=WorkerMode.EPHEMERAL, provider="kubernetes", scope=str(uuid4()),
                      image="hodei-agent:test", settings=kube, job_id=uuid4(),
                      job_timeout_s=30.0, cpus=1.5, memory_bytes=256 * 2**20), kube


def test_a_fully_configured_pod_is_valid_and_says_what_the_settings_say() -> None:
    worker, kube = spec(
        namespace="jobs", service_account="runner", node_selector={"pool": "jobs"},
        tolerations=[{"key": "dedicated", "value": "jobs", "effect": "NoSchedule"},
                     {"key": "gpu", "operator": "Exists"}],
        image_pull_policy="IfNotPresent", image_pull_secrets=["registry"],
        priority_class="batch", labels={"team": "data"},
        annotations={"example.com/owner": "data team"}, host_network=True,
        agent_nats_url="nats://nats.hodei.svc:4222")
    pod = pods.pod_manifest(worker, kube, nats_url=worker.nats_url, env={"TZ": "UTC"},
                            grace_s=10)
    kubernetes_validate.validate(pod, "1.32", strict=True)
    kubernetes_validate.validate(pods.secret_manifest(worker, kube), "1.32", strict=True)
    assert pod["metadata"]["labels"]["team"] == "data"
    assert pod["metadata"]["annotations"] == {"example.com/owner": "data team"}
    s = pod["spec"]
    assert (s["serviceAccountName"], s["priorityClassName"]) == ("runner", "batch")
    assert s["nodeSelector"] == {"pool": "jobs"}
    assert s["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "jobs", "effect": "NoSchedule"},
        {"key": "gpu", "operator": "Exists"}]
    assert s["imagePullSecrets"] == [{"name": "registry"}]
    assert (s["hostNetwork"], s["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    assert (s["activeDeadlineSeconds"], s["terminationGracePeriodSeconds"]) == (90, 10)
    (container,) = s["containers"]
    assert container["imagePullPolicy"] == "IfNotPresent"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HODEI_NATS_URL"] == "nats://nats.hodei.svc:4222"  # the agents' URL wins
    assert env["TZ"] == "UTC"
    assert env["HODEI_BOOTSTRAP_TOKEN"] is None  # from the Secret, never in the spec
    assert "s3cret-token" not in repr(pod)
    assert container["resources"]["limits"] == {"cpu": "1500m", "memory": str(256 * 2**20)}


def test_a_pod_without_settings_gets_the_defaults_and_the_services_nats_url() -> None:
    worker, kube = spec()
    pod = pods.pod_manifest(worker, kube, nats_url=worker.nats_url, env={}, grace_s=0.2)
    kubernetes_validate.validate(pod, "1.32", strict=True)
    assert "hostNetwork" not in pod["spec"]
    assert pod["spec"]["terminationGracePeriodSeconds"] == 1
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["HODEI_NATS_URL"] == "nats://10.0.0.1:4222"
    assert env["HODEI_AGENT_ON_SIGTERM"] == "abandon"
    assert env["HODEI_AGENT_JOB_USER"] == "10001:10001"  # even from an image that lacks it


def pod(phase: str = "Pending", *, state: dict[str, Any] | None = None,
        reason: str | None = None, conditions: list[dict[str, Any]] | None = None,
        deleting: bool = False, labelled: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if reason:
        status |= {"reason": reason, "message": "The node was low on resource: memory."}
    if state is not None:
        status["containerStatuses"] = [{"name": "agent", "state": state}]
    meta: dict[str, Any] = {"name": NAME, "labels": {pods.LABEL_WORKER: str(WORKER)}
                            if labelled else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T12:00:00Z"
    return {"metadata": meta, "status": status,
            "spec": {"nodeName": "node-1", "containers": [{"image": "img:1"}]}}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, "message": message}}


def terminated(code: int, reason: str) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason}}


@pytest.mark.parametrize(
    ("event", "seen", "verdict", "words"),
    [
        ("ADDED", pod(), Verdict.PROGRESS, f"pod {NAME} Pending"),
        ("MODIFIED", pod(state=waiting("ContainerCreating")), Verdict.PROGRESS,
         f"pod {NAME} Pending: ContainerCreating"),
        ("MODIFIED", pod(conditions=[{"type": "PodScheduled", "status": "False",
                                      "reason": "Unschedulable",
                                      "message": "0/1 nodes are available"}]),
         Verdict.PROGRESS, f"pod {NAME} Pending: Unschedulable: 0/1 nodes are available"),
        ("MODIFIED", pod(state=waiting("ErrImagePull", "not found")), Verdict.CANNOT_START,
         "image not found: img:1 (ErrImagePull: not found)"),
        ("MODIFIED", pod(state=waiting("InvalidImageName", "bad")), Verdict.CANNOT_START,
         "invalid image name: img:1 (bad)"),
        ("MODIFIED", pod(state=waiting("CreateContainerConfigError", 'secret "x" not found')),
         Verdict.CANNOT_START,
         'cannot start the worker\'s container (CreateContainerConfigError): secret "x" not '
         "found"),
        ("MODIFIED", pod("Running", state={"running": {}}), Verdict.PROGRESS,
         f"pod {NAME} Running on node-1"),
        ("MODIFIED", pod("Failed", reason="Evicted", state=terminated(137, "Error")),
         Verdict.LOST, f"its pod {NAME} was evicted: The node was low on resource: memory."),
        ("MODIFIED", pod("Running", conditions=[{"type": "DisruptionTarget", "status": "True",
                                                 "reason": "PreemptionByScheduler"}]),
         Verdict.LOST, f"its pod {NAME} was preempted: PreemptionByScheduler"),
        ("MODIFIED", pod("Running", conditions=[{"type": "DisruptionTarget", "status": "True",
                                                 "reason": "TerminationByKubelet",
                                                 "message": "low on memory"}]),
         Verdict.LOST, f"its pod {NAME} was evicted by its node: low on memory"),
        ("MODIFIED", pod("Running", state={"running": {}}, deleting=True), Verdict.LOST,
         f"its pod {NAME} is being deleted"),
        ("DELETED", pod("Running", state={"running": {}}), Verdict.LOST,
         f"its pod {NAME} was deleted"),
        ("MODIFIED", pod("Failed", reason="DeadlineExceeded"), Verdict.TIMED_OUT,
         f"its pod {NAME} ran past its activeDeadlineSeconds"),
        ("MODIFIED", pod("Failed", state=terminated(1, "Error")), Verdict.ENDED,
         f"its pod {NAME} ended: Error, exit code 1"),
    ],
)
def test_a_pod_s_state_becomes_what_the_platform_does(
    event: str, seen: dict[str, Any], verdict: Verdict, words: str,
) -> None:
    assert pods.news_of(event, seen) == News(worker_id=WORKER, verdict=verdict, reason=words,
                                             **({"exit_code": 1} if verdict is Verdict.ENDED
                                                else {}))


def test_an_ended_pod_tells_its_exit_code_and_whether_memory_ran_out() -> None:
    oom = pods.news_of("MODIFIED", pod("Succeeded", state=terminated(0, "OOMKilled")))
    assert oom is not None
    assert (oom.verdict, oom.exit_code, oom.oom_killed) == (Verdict.ENDED, 0, True)
    deleted = pods.news_of("DELETED", pod("Succeeded", state=terminated(0, "Completed")))
    assert deleted is not None
    assert (deleted.verdict, deleted.exit_code) == (Verdict.ENDED, 0)  # its job reported


def test_a_pod_without_a_worker_label_means_nothing() -> None:
    assert pods.news_of("ADDED", pod(labelled=False)) is None


def test_reconciliation_sees_a_pending_or_running_pod_alive_and_others_ended() -> None:
    assert pods.resource_of("jobs", pod()).alive
    assert pods.resource_of("jobs", pod("Running", state={"running": {}})).alive
    gone = pods.resource_of("jobs", pod("Failed", reason="Evicted"))
    assert (gone.alive, gone.reason, gone.resource_id) == (False, "Evicted", f"jobs/{NAME}")
    oom = pods.resource_of("jobs", pod("Failed", state=terminated(137, "OOMKilled")))
    assert (oom.alive, oom.exit_code, oom.oom_killed) == (False, 137, True)
    assert not pods.resource_of("jobs", pod("Running", deleting=True)).alive
