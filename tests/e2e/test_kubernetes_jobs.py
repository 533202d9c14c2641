"""`hodei job run --provider kubernetes` on `hodei dev up`, against the Kubernetes stand-in.

The stand-in (``hodei_common.testing.kube``) is an API server the official client talks to
over HTTP and a kubelet running each pod as a real Docker container of the worker image.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import kubernetes_validate
import pytest
from kubernetes import config
from kubernetes.client import CoreV1Api

from hodei_common.testing import assert_eventually
from hodei_common.testing.kube import KubeStandIn
from hodei_provisioner.providers.docker import LABEL_MANAGED as DOCKER_MANAGED
from hodei_provisioner.providers.kubernetes_pods import (
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_PROVIDER_ID,
    LABEL_WORKER,
)
from tests.cli.conftest import CliResult, run_cli
from tests.e2e.attacks import ALL_REFUSED, ON_THE_AGENT
from tests.e2e.conftest import Platform, cli_json, job_of, start_platform, stop_platform

pytestmark = [pytest.mark.e2e, pytest.mark.kubernetes, pytest.mark.docker, pytest.mark.slow]

PENDING_TIMEOUT_S = 3
KUBERNETES_VERSION = "1.32"


class Cluster:
    """This module's namespace on the stand-in, seen through the official client."""

    def __init__(self, standin: KubeStandIn, namespace: str) -> None:
        self.standin = standin
        self.namespace = namespace
        self.core = CoreV1Api(config.new_client_from_config(
            config_file=str(standin.kubeconfig), context=standin.context))

    def pods(self, selector: str = f"{LABEL_MANAGED}=true") -> list[Any]:
        return list(self.core.list_namespaced_pod(self.namespace,
                                                  label_selector=selector).items)

    def secrets(self) -> list[Any]:
        return list(self.core.list_namespaced_secret(
            self.namespace, label_selector=f"{LABEL_MANAGED}=true").items)


@pytest.fixture(scope="module")
def cluster(kube_standin: KubeStandIn) -> Iterator[Cluster]:
    namespace = f"hodei-e2e-{uuid.uuid4().hex[:8]}"
    kube_standin.create_namespace(namespace)
    found = Cluster(kube_standin, namespace)
    yield found
    found.core.api_client.close()


@pytest.fixture(scope="module")
def kube_platform(cluster: Cluster, worker_image: str) -> Iterator[Platform]:
    root = Path(tempfile.mkdtemp(prefix="hodei-e2e-kube-"))
    root.chmod(0o755)
    running = start_platform(root / "home", {"HODEI_DOCKER_ENABLED": "1",
                                             "HODEI_WORKER_IMAGE": worker_image})
    try:
        configured = asyncio.run(run_cli(
            running.env, "provider", "set", "kubernetes", "--enable", "--image", worker_image,
            "--namespace", cluster.namespace, "--kubeconfig", str(cluster.standin.kubeconfig),
            "--context", cluster.standin.context, "--pending-timeout", str(PENDING_TIMEOUT_S),
            "--max-workers", "8"))
        assert configured.code == 0, configured.stderr
        yield running
    finally:
        stop_platform(running)
        shutil.rmtree(root, ignore_errors=True)


async def kube_job(platform: Platform, *args: str, within_s: float = 60) -> CliResult:
    return await run_cli(platform.env, "job", "run", "--provider", "kubernetes", *args,
                         timeout_s=within_s)


async def queue(platform: Platform, *args: str) -> str:
    queued = await run_cli(platform.env, "job", "queue", "--provider", "kubernetes", *args)
    assert queued.code == 0, queued.stderr
    return queued.stdout.strip()


async def scope_of(platform: Platform) -> str:
    providers = await cli_json(platform, "provider", "list")
    return str(next(p["id"] for p in providers if p["name"] == "kubernetes"))


async def until_state(platform: Platform, job_id: str, *states: str,
                      within_s: float = 30) -> dict[str, Any]:
    async def reached() -> bool:
        return (await job_of(platform, job_id))["state"] in states

    await assert_eventually(reached, within_s=within_s,
                            message=f"job {job_id} never reached {states}")
    return await job_of(platform, job_id)


async def no_pods_left(cluster: Cluster, within_s: float = 20) -> None:
    async def none_left() -> bool:
        return not await asyncio.to_thread(cluster.pods) \
            and not await asyncio.to_thread(cluster.secrets)

    await assert_eventually(none_left, within_s=within_s, message="pods or secrets left")


async def pod_of(cluster: Cluster, job_id: str, within_s: float = 20) -> Any:
    async def found() -> Any:
        pods = await asyncio.to_thread(cluster.pods, f"{LABEL_JOB}={job_id}")
        return pods[0] if pods else None

    return await assert_eventually(found, within_s=within_s, message=f"no pod for {job_id}")


async def events_of(platform: Platform, job_id: str) -> list[str]:
    trail = await cli_json(platform, "job", "events", job_id)
    return [e["event_type"] for e in trail if e["aggregate_type"] == "job"]


CASES: list[tuple[list[str], int, str]] = [
    (["--command", "echo hello"], 0, "hello\n"),
    (["--command", "echo Step1 && sleep 1 && echo Step2 && sleep 1 && echo Step3"], 0,
     "Step1\nStep2\nStep3\n"),
    (["--command", 'echo "$MY_VAR $NUM_VAR"', "--env", "MY_VAR=hello_world,NUM_VAR=42"], 0,
     "hello_world 42\n"),
    (["--command", "sh", "--args", "-c 'echo Processing file test.txt && echo Done'"], 0,
     "Processing file test.txt\nDone\n"),
    (["--command", "for i in $(seq 1 10); do echo tick $i; sleep 1; done"], 0,
     "".join(f"tick {i}\n" for i in range(1, 11))),
    (["--command", "id -u"], 0, "10001\n"),  # the image's job user, not the agent's root
]


async def test_the_job_types_run_as_pods_with_their_output_and_leave_none_behind(
    kube_platform: Platform, cluster: Cluster,
) -> None:
    results = await asyncio.gather(*(kube_job(kube_platform, *args) for args, _, _ in CASES))
    for (args, code, stdout), result in zip(CASES, results, strict=True):
        assert (result.code, result.stdout) == (code, stdout), (args, result.stderr)
    jobs = await cli_json(kube_platform, "job", "list", "--limit", str(len(CASES)))
    assert {(j["provider"], j["state"]) for j in jobs} == {("kubernetes", "SUCCEEDED")}
    for job in jobs:
        assert await events_of(kube_platform, job["id"]) == [
            "JobCreated", "JobAssigned", "JobAccepted", "JobStarted", "JobSucceeded"]

    async def all_terminated() -> bool:
        workers = await cli_json(kube_platform, "worker", "list")
        return bool(workers) and all(w["state"] == "TERMINATED" for w in workers)

    await assert_eventually(all_terminated, within_s=20)
    workers = {w["id"]: w for w in await cli_json(kube_platform, "worker", "list")}
    for job in jobs:  # each in a pod of its own, named after its worker
        assert workers[job["worker_id"]]["provider_resource_id"] == \
            f"{cluster.namespace}/hodei-worker-{job['worker_id']}"
    await no_pods_left(cluster)


async def test_a_batch_of_five_runs_as_five_pods(
    kube_platform: Platform, cluster: Cluster,
) -> None:
    ids = [await queue(kube_platform, "--command", f"echo batch {i}") for i in range(5)]
    for i, job_id in enumerate(ids):
        job = await until_state(kube_platform, job_id, "SUCCEEDED", "FAILED")
        assert job["state"] == "SUCCEEDED", job
        logs = await run_cli(kube_platform.env, "job", "logs", job_id)
        assert logs.stdout == f"batch {i}\n"
    assert len({(await job_of(kube_platform, j))["worker_id"] for j in ids}) == 5
    await no_pods_left(cluster)


async def test_a_pod_s_job_cannot_read_signal_or_inherit_the_powers_of_its_agent(
    kube_platform: Platform, cluster: Cluster,
) -> None:
    result = await kube_job(kube_platform, "--command", ON_THE_AGENT)
    assert (result.code, result.stdout) == (0, ALL_REFUSED), result.stderr
    (job,) = await cli_json(kube_platform, "job", "list", "--limit", "1")
    assert job["state"] == "SUCCEEDED"
    await no_pods_left(cluster)


async def test_every_pod_and_secret_sent_is_valid_and_keeps_the_token_out_of_the_spec(
    kube_platform: Platform, cluster: Cluster,
) -> None:
    result = await kube_job(kube_platform, "--command", "echo checked", "--cpus", "0.5",
                            "--memory", "128m", "--timeout", "30")
    assert result.code == 0, result.stderr
    job = (await cli_json(kube_platform, "job", "list", "--limit", "1"))[0]
    name = f"hodei-worker-{job['worker_id']}"
    pods = [p for p in cluster.standin.received("pods") if p["metadata"]["name"] == name]
    secrets = [s for s in cluster.standin.received("secrets")
               if s["metadata"]["name"] == name]
    assert len(pods) == 1
    assert len(secrets) == 1
    for body in (*pods, *secrets):
        kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
    pod = pods[0]
    assert pod["metadata"]["labels"] == {
        LABEL_MANAGED: "true", LABEL_WORKER: job["worker_id"], LABEL_JOB: job["id"],
        "hodei.provider": "kubernetes", LABEL_PROVIDER_ID: await scope_of(kube_platform)}
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["activeDeadlineSeconds"] >= 30
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = spec["containers"]
    # The agent: root with only what it needs to run its job as uid 10001.
    assert container["securityContext"]["runAsUser"] == 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {
        "drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "KILL", "SETGID", "SETUID"]}
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": str(128 * 2**20)},
                                      "limits": {"cpu": "500m", "memory": str(128 * 2**20)}}
    token = next(e for e in container["env"] if e["name"] == "HODEI_BOOTSTRAP_TOKEN")
    assert token == {"name": "HODEI_BOOTSTRAP_TOKEN",
                     "valueFrom": {"secretKeyRef": {"name": name, "key": "token"}}}
    assert "data" in secrets[0]
    assert secrets[0]["data"]["token"] not in json.dumps(pod)
    await no_pods_left(cluster)


async def test_kubernetes_jobs_make_no_docker_containers_and_docker_jobs_no_pods(
    kube_platform: Platform, cluster: Cluster, docker_engine: docker.DockerClient,
) -> None:
    seen_containers: set[str] = set()
    seen_pods: set[str] = set()
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            listed = await asyncio.to_thread(docker_engine.api.containers, all=True, filters={
                "label": [f"{DOCKER_MANAGED}=true"]})
            seen_containers.update(c["Labels"].get(LABEL_JOB, "") for c in listed)
            seen_pods.update(p.metadata.labels.get(LABEL_JOB, "")
                             for p in await asyncio.to_thread(cluster.pods))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        in_pod, in_docker = await asyncio.gather(
            kube_job(kube_platform, "--command", "sleep 1; echo pod"),
            run_cli(kube_platform.env, "job", "run", "--provider", "docker", "--command",
                    "sleep 1; echo container"))
    finally:
        done.set()
        await watcher
    assert (in_pod.code, in_pod.stdout) == (0, "pod\n"), in_pod.stderr
    assert (in_docker.code, in_docker.stdout) == (0, "container\n"), in_docker.stderr
    jobs = {j["provider"]: j["id"] for j in
            await cli_json(kube_platform, "job", "list", "--limit", "2")}
    assert jobs["kubernetes"] in seen_pods
    assert jobs["kubernetes"] not in seen_containers
    assert jobs["docker"] in seen_containers
    assert jobs["docker"] not in seen_pods


async def test_a_job_over_its_memory_limit_fails_as_oomkilled_with_its_log_kept(
    kube_platform: Platform, cluster: Cluster,
) -> None:
    result = await kube_job(
        kube_platform, "--memory", "64m", "--command",
        "echo allocating; python3 -c 'b = bytearray(500 * 2**20); print(len(b))'")
    assert result.code == 137, result.stderr
    assert result.stdout == "allocating\n"
    job = (await cli_json(kube_platform, "job", "list", "--limit", "1"))[0]
    assert (job["state"], job["exit_code"]) == ("FAILED", 137)
    assert job["error"].startswith("OOMKilled")
    logs = await run_cli(kube_platform.env, "job", "logs", job["id"])
    assert logs.stdout == "allocating\n"
    await no_pods_left(cluster)


async def test_a_missing_image_fails_the_job_at_once_naming_the_image(
    kube_platform: Platform, cluster: Cluster, worker_image: str,
) -> None:
    missing = "registry.invalid/hodei/no-such-agent:1"
    changed = await run_cli(kube_platform.env, "provider", "set", "kubernetes", "--image",
                            missing)
    assert changed.code == 0, changed.stderr
    try:
        job_id = await queue(kube_platform, "--command", "echo never")
        job = await until_state(kube_platform, job_id, "FAILED", "SUCCEEDED", within_s=10)
    finally:
        await run_cli(kube_platform.env, "provider", "set", "kubernetes", "--image",
                      worker_image)
    assert job["state"] == "FAILED"
    assert job["error"].startswith(f"image not found: {missing}")
    assert job["attempt"] == 1  # never retried in a loop
    trail = await cli_json(kube_platform, "job", "events", job_id)
    failed = [e["payload"]["error"] for e in trail if e["event_type"] == "WorkerFailed"]
    assert len(failed) == 1  # one worker tried, not one after another
    assert failed[0] == job["error"]
    await no_pods_left(cluster)


async def test_a_pod_no_node_can_take_fails_its_job_after_the_pending_timeout(
    kube_platform: Platform, cluster: Cluster,
) -> None:
    job_id = await queue(kube_platform, "--cpus", "64", "--command", "echo never")
    pod = await pod_of(cluster, job_id)

    async def explained() -> str | None:
        found = await cli_json(kube_platform, "job", "explain", job_id)
        text = json.dumps(found)
        return text if "Unschedulable" in text else None

    text = await assert_eventually(explained, within_s=PENDING_TIMEOUT_S + 5)
    assert pod.metadata.name in text
    job = await until_state(kube_platform, job_id, "FAILED", within_s=PENDING_TIMEOUT_S + 10)
    assert job["error"].startswith("unschedulable: 0/1 nodes are available")
    assert "Insufficient cpu" in job["error"]
    await no_pods_left(cluster)


async def _requeued_after(kube_platform: Platform, job_id: str) -> dict[str, Any]:
    job = await until_state(kube_platform, job_id, "SUCCEEDED", "FAILED", "CANCELLED",
                            within_s=60)
    assert (job["state"], job["attempt"]) == ("SUCCEEDED", 2), job
    kinds = await events_of(kube_platform, job_id)
    assert kinds.count("JobRequeued") == 1
    assert kinds.count("JobSucceeded") == 1
    logs = await run_cli(kube_platform.env, "job", "logs", job_id, "--follow", timeout_s=20)
    assert logs.stdout == "up\nup\ndone\n"  # each attempt's lines, in order
    return job


async def test_an_evicted_pod_s_job_succeeds_on_attempt_two(
    kube_platform: Platform, cluster: Cluster,
) -> None:
    job_id = await queue(kube_platform, "--command", "echo up; sleep 3; echo done")
    await until_state(kube_platform, job_id, "RUNNING")
    pod = await pod_of(cluster, job_id)
    cluster.standin.evict(cluster.namespace, pod.metadata.name)
    await _requeued_after(kube_platform, job_id)
    lost = [w for w in await cli_json(kube_platform, "worker", "list", "--state", "FAILED")
            if w["provider_resource_id"] == f"{cluster.namespace}/{pod.metadata.name}"]
    assert len(lost) == 1
    assert lost[0]["error"].startswith(f"its pod {pod.metadata.name} was evicted")
    await no_pods_left(cluster)


async def test_a_pod_deleted_by_hand_requeues_its_job(
    kube_platform: Platform, cluster: Cluster,
) -> None:
    job_id = await queue(kube_platform, "--command", "echo up; sleep 3; echo done")
    await until_state(kube_platform, job_id, "RUNNING")
    pod = await pod_of(cluster, job_id)
    await asyncio.to_thread(cluster.core.delete_namespaced_pod, pod.metadata.name,
                            cluster.namespace)
    await _requeued_after(kube_platform, job_id)
    lost = [w for w in await cli_json(kube_platform, "worker", "list", "--state", "FAILED")
            if w["provider_resource_id"] == f"{cluster.namespace}/{pod.metadata.name}"]
    assert [w["error"] for w in lost] == [f"its pod {pod.metadata.name} is being deleted"]
    await no_pods_left(cluster)


async def test_dropped_watches_and_an_expired_version_lose_nothing(
    kube_platform: Platform, cluster: Cluster,
) -> None:
    ids = [await queue(kube_platform, "--command", f"sleep 4; echo survived {i}")
           for i in range(3)]
    await until_state(kube_platform, ids[0], "RUNNING", within_s=60)
    assert cluster.standin.drop_watches() >= 1
    await asyncio.sleep(0.5)
    cluster.standin.expire_watches()
    for i, job_id in enumerate(ids):
        job = await until_state(kube_platform, job_id, "SUCCEEDED", "FAILED", within_s=60)
        assert (job["state"], job["attempt"]) == ("SUCCEEDED", 1), job
        logs = await run_cli(kube_platform.env, "job", "logs", job_id)
        assert logs.stdout == f"survived {i}\n"
    await no_pods_left(cluster)


async def test_cancel_deletes_the_pod(kube_platform: Platform, cluster: Cluster) -> None:
    job_id = await queue(kube_platform, "--command", "echo up; sleep 300")
    await until_state(kube_platform, job_id, "RUNNING")
    await pod_of(cluster, job_id)
    cancelled = await run_cli(kube_platform.env, "job", "cancel", job_id)
    assert cancelled.code == 0, cancelled.stderr
    job = await until_state(kube_platform, job_id, "CANCELLED", within_s=20)
    assert job["attempt"] == 1
    await no_pods_left(cluster)


async def test_a_create_the_api_refuses_is_retried_by_a_new_worker(
    kube_platform: Platform, cluster: Cluster,
) -> None:
    cluster.standin.fail_next_creates(1, status=500)
    result = await kube_job(kube_platform, "--command", "echo second time lucky")
    assert (result.code, result.stdout) == (0, "second time lucky\n"), result.stderr
    failed = [w for w in await cli_json(kube_platform, "worker", "list", "--state", "FAILED")
              if "500" in (w.get("error") or "")]
    assert failed, "the refused create left no FAILED worker saying why"
    await no_pods_left(cluster)


def _stray_pod(name: str, scope: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {
            LABEL_MANAGED: "true", LABEL_PROVIDER_ID: scope, LABEL_WORKER: str(uuid.uuid4())}},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "agent", "image": image, "command": ["sleep", "300"]}]},
    }


async def test_a_labelled_pod_without_a_live_worker_is_deleted_and_others_left_alone(
    kube_platform: Platform, cluster: Cluster, worker_image: str,
) -> None:
    scope = await scope_of(kube_platform)
    ours, theirs = _stray_pod("hodei-worker-stray-ours", scope, worker_image), \
        _stray_pod("hodei-worker-stray-theirs", str(uuid.uuid4()), worker_image)
    for body in (ours, theirs):
        await asyncio.to_thread(cluster.core.create_namespaced_pod, cluster.namespace, body)

    async def ours_gone() -> bool:
        names = {p.metadata.name for p in await asyncio.to_thread(cluster.pods)}
        return "hodei-worker-stray-ours" not in names

    await assert_eventually(ours_gone, within_s=20)
    names = {p.metadata.name for p in await asyncio.to_thread(cluster.pods)}
    assert "hodei-worker-stray-theirs" in names
    await asyncio.to_thread(cluster.core.delete_namespaced_pod, "hodei-worker-stray-theirs",
                            cluster.namespace, grace_period_seconds=0)
    await no_pods_left(cluster)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--namespace", "Jobs_1"], "namespace must be a Kubernetes namespace"),
        (["--toleration", "gpu:NoRun"], "tolerations must be tolerations"),
        (["--node-selector", "pool"], "--node-selector takes KEY=VALUE"),
        (["--node-selector", "bad key=x"], "node_selector must be Kubernetes labels"),
        (["--kubeconfig", "/nonexistent/kubeconfig"], "cannot read it"),
        (["--in-cluster", "--kubeconfig", "/k"], "not both"),
        (["--agent-nats-url", "http://nats:4222"], "agent_nats_url must be a NATS URL"),
    ],
)
async def test_bad_kubernetes_settings_are_one_error_line_and_change_nothing(
    kube_platform: Platform, args: list[str], message: str,
) -> None:
    before = await cli_json(kube_platform, "provider", "list")
    result = await run_cli(kube_platform.env, "provider", "set", "kubernetes", *args)
    assert result.code != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert await cli_json(kube_platform, "provider", "list") == before
