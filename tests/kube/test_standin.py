"""The Kubernetes stand-in, driven by the official client as a provider drives a cluster."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ProtocolError

from hodei_common.testing import assert_eventually
from hodei_common.testing.kube import KubeStandIn

pytestmark = [pytest.mark.kubernetes, pytest.mark.docker]

MISSING_IMAGE = "hodei-standin-missing:never"


@pytest.fixture(scope="module")
def core(kube_standin: KubeStandIn) -> Iterator[client.CoreV1Api]:
    api = config.new_client_from_config(config_file=str(kube_standin.kubeconfig),
                                        context=kube_standin.context, persist_config=False)
    try:
        yield client.CoreV1Api(api)
    finally:
        api.close()


@pytest.fixture
def ns(kube_standin: KubeStandIn) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube_standin.create_namespace(name)
    return name


def pod(name: str, image: str, script: str, *, labels: dict[str, str] | None = None,
        **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "worker", "image": image,
                                 "command": ["sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {"app": "hodei-test"}},
            "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def in_thread(work: Callable[[], Any]) -> Future[Any]:
    """Run blocking ``work`` (a watch) in a thread of its own."""
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as e:
            future.set_exception(e)

    threading.Thread(target=run, daemon=True).start()
    return future


def phase_of(core: client.CoreV1Api, ns: str, name: str) -> str:
    return str(core.read_namespaced_pod(name, ns).status.phase)


def events_of(core: client.CoreV1Api, ns: str, name: str) -> list[str]:
    found = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
    return [event.reason for event in found.items]


async def test_pod_runs_then_succeeds_with_its_log(
        core: client.CoreV1Api, ns: str, worker_image: str) -> None:
    core.create_namespaced_pod(ns, pod("ok", worker_image, "echo hi; sleep 1"))
    running = await assert_eventually(
        lambda: core.read_namespaced_pod("ok", ns).status.phase == "Running"
        and core.read_namespaced_pod("ok", ns))
    assert running.spec.node_name == "standin-node"
    assert running.status.pod_ip == "127.0.0.1"
    status = running.status.container_statuses[0]
    assert status.ready
    assert status.container_id.startswith("docker://")
    assert status.state.running.started_at is not None
    await assert_eventually(lambda: phase_of(core, ns, "ok") == "Succeeded", within_s=15)
    terminated = core.read_namespaced_pod("ok", ns).status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert core.read_namespaced_pod_log("ok", ns) == "hi\n"
    assert {"Scheduled", "Pulled", "Created", "Started"} <= set(events_of(core, ns, "ok"))


async def test_a_container_runs_with_the_user_and_capabilities_its_security_context_says(
        core: client.CoreV1Api, ns: str, worker_image: str) -> None:
    locked = {"runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"], "add": ["KILL", "SETUID"]}}
    core.create_namespaced_pod(ns, pod(
        "locked", worker_image, "grep -E '^(Uid|Gid|CapEff|NoNewPrivs):' /proc/self/status",
        container={"securityContext": locked}))
    await assert_eventually(lambda: phase_of(core, ns, "locked") == "Succeeded", within_s=15)
    assert core.read_namespaced_pod_log("locked", ns).split("\n") == [
        "Uid:\t0\t0\t0\t0", "Gid:\t0\t0\t0\t0",
        f"CapEff:\t{1 << 5 | 1 << 7:016x}", "NoNewPrivs:\t1", ""]


async def test_failed_pod_reports_exit_code_and_reason(
        core: client.CoreV1Api, ns: str, worker_image: str) -> None:
    core.create_namespaced_pod(ns, pod("bad", worker_image, "echo hi; exit 3"))
    await assert_eventually(lambda: phase_of(core, ns, "bad") == "Failed", within_s=15)
    terminated = core.read_namespaced_pod("bad", ns).status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")


async def test_watch_by_label_sees_only_matching_pods_and_resumes(
        core: client.CoreV1Api, ns: str) -> None:
    listed = core.list_namespaced_pod(ns, label_selector="app=mine")
    start = listed.metadata.resource_version
    for name, app in (("a", "mine"), ("b", "other"), ("c", "mine")):
        core.create_namespaced_pod(ns, pod(name, MISSING_IMAGE, "true", labels={"app": app}))
    names = [p.metadata.name for p in
             core.list_namespaced_pod(ns, label_selector="app in (mine, x),!skip").items]
    assert names == ["a", "c"]
    w = watch.Watch()
    seen: list[tuple[str, str]] = []
    for event in w.stream(core.list_namespaced_pod, ns, label_selector="app=mine",
                          resource_version=start, timeout_seconds=2):
        seen.append((event["type"], event["object"].metadata.name))
        if ("ADDED", "c") in seen:
            w.stop()
    assert seen[0] == ("ADDED", "a")
    assert all(name != "b" for _, name in seen)
    assert ("ADDED", "c") in seen


async def test_watch_after_expire_raises_410(
        core: client.CoreV1Api, ns: str, kube_standin: KubeStandIn) -> None:
    start = core.list_namespaced_pod(ns).metadata.resource_version
    core.create_namespaced_pod(ns, pod("w", MISSING_IMAGE, "true"))
    before = kube_standin.open_watches()

    def consume() -> None:
        for _ in watch.Watch().stream(core.list_namespaced_pod, ns, resource_version=start):
            pass

    done = in_thread(consume)
    await assert_eventually(lambda: kube_standin.open_watches() > before)
    kube_standin.expire_watches()
    with pytest.raises(ApiException) as raised:
        done.result(timeout=10)
    assert raised.value.status == 410
    # A fresh list's version is watchable again: the way a client recovers from 410.
    fresh = core.list_namespaced_pod(ns).metadata.resource_version
    kinds = {e["type"] for e in watch.Watch().stream(
        core.list_namespaced_pod, ns, resource_version=fresh, timeout_seconds=1)}
    assert kinds <= {"MODIFIED"}  # the pod's image pull back-off goes on; no 410


async def test_dropped_watch_ends_the_stream(
        core: client.CoreV1Api, ns: str, kube_standin: KubeStandIn) -> None:
    before = kube_standin.open_watches()

    def consume() -> None:
        for _ in watch.Watch().stream(core.list_namespaced_pod, ns, timeout_seconds=120):
            pass

    done = in_thread(consume)
    await assert_eventually(lambda: kube_standin.open_watches() > before)
    assert kube_standin.drop_watches() >= 1
    # A cut connection, as when the server dies: the client reads a truncated stream.
    with pytest.raises(ProtocolError, match="ended prematurely"):
        done.result(timeout=10)


async def test_missing_image_waits_with_err_image_pull(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_pod(ns, pod("noimg", MISSING_IMAGE, "true"))

    def waiting_reason() -> str | None:
        statuses = core.read_namespaced_pod("noimg", ns).status.container_statuses or []
        return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting \
            else None

    await assert_eventually(lambda: waiting_reason() == "ErrImagePull")
    await assert_eventually(lambda: waiting_reason() == "ImagePullBackOff")
    assert phase_of(core, ns, "noimg") == "Pending"
    assert "Failed" in events_of(core, ns, "noimg")


async def test_invalid_image_name_is_reported(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_pod(ns, pod("badref", "Not A Valid:Image", "true"))

    def reason() -> str | None:
        statuses = core.read_namespaced_pod("badref", ns).status.container_statuses or []
        return statuses[0].state.waiting.reason if statuses else None

    await assert_eventually(lambda: reason() == "InvalidImageName")


async def test_requests_above_capacity_stay_unschedulable(
        core: client.CoreV1Api, ns: str, worker_image: str) -> None:
    body = pod("big", worker_image, "true",
               container={"resources": {"requests": {"cpu": "64", "memory": "1Gi"}}})
    core.create_namespaced_pod(ns, body)
    found = core.read_namespaced_pod("big", ns)
    assert found.status.phase == "Pending"
    assert found.spec.node_name is None
    scheduled = next(c for c in found.status.conditions if c.type == "PodScheduled")
    assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")
    assert scheduled.message.startswith("0/1 nodes are available: 1 Insufficient cpu.")
    assert "FailedScheduling" in events_of(core, ns, "big")


async def test_secret_missing_then_created_lets_the_pod_start(
        core: client.CoreV1Api, ns: str, worker_image: str) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}}]
    core.create_namespaced_pod(ns, pod("needs", worker_image, 'echo "t=$TOKEN"',
                                       container={"env": env}))

    def waiting() -> Any:
        statuses = core.read_namespaced_pod("needs", ns).status.container_statuses or []
        return statuses and statuses[0].state.waiting

    state = await assert_eventually(
        lambda: (w := waiting()) and w.reason == "CreateContainerConfigError" and w)
    assert state.message == 'secret "tok" not found'
    core.create_namespaced_secret(ns, {"metadata": {"name": "tok"},
                                       "stringData": {"token": "s3cret"}})
    await assert_eventually(lambda: phase_of(core, ns, "needs") == "Succeeded", within_s=15)
    assert core.read_namespaced_pod_log("needs", ns) == "t=s3cret\n"


async def test_delete_with_grace_ends_in_deleted_and_collects_owned_secret(
        core: client.CoreV1Api, ns: str, worker_image: str) -> None:
    created = core.create_namespaced_pod(
        ns, pod("del", worker_image, "trap 'exit 0' TERM; sleep 300 & wait"))
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "del", "uid": created.metadata.uid}
    core.create_namespaced_secret(ns, {"metadata": {"name": "del-token",
                                                    "ownerReferences": [owner]},
                                       "data": {"token": base64.b64encode(b"x").decode()}})
    await assert_eventually(lambda: phase_of(core, ns, "del") == "Running")
    rv = core.read_namespaced_pod("del", ns).metadata.resource_version
    marked = core.delete_namespaced_pod("del", ns, grace_period_seconds=5)
    assert marked.metadata.deletion_timestamp is not None
    assert marked.metadata.deletion_grace_period_seconds == 5
    w, kinds = watch.Watch(), []
    for event in w.stream(core.list_namespaced_pod, ns, resource_version=rv,
                          timeout_seconds=15):
        kinds.append(event["type"])
        if event["type"] == "DELETED":
            w.stop()
    assert kinds[-1] == "DELETED"
    with pytest.raises(ApiException) as raised:
        core.read_namespaced_secret("del-token", ns)
    assert raised.value.status == 404
    assert "Killing" in events_of(core, ns, "del")


async def test_evicted_pod_fails_with_disruption_target(
        core: client.CoreV1Api, ns: str, worker_image: str, kube_standin: KubeStandIn) -> None:
    core.create_namespaced_pod(ns, pod("ev", worker_image, "sleep 300"))
    await assert_eventually(lambda: phase_of(core, ns, "ev") == "Running")
    kube_standin.evict(ns, "ev")
    await assert_eventually(lambda: phase_of(core, ns, "ev") == "Failed", within_s=15)
    found = core.read_namespaced_pod("ev", ns)
    assert found.status.reason == "Evicted"
    assert found.status.message
    target = next(c for c in found.status.conditions if c.type == "DisruptionTarget")
    assert (target.status, target.reason) == ("True", "TerminationByKubelet")
    assert "Evicted" in events_of(core, ns, "ev")


async def test_memory_limit_kills_with_oom(
        core: client.CoreV1Api, ns: str, worker_image: str) -> None:
    body = pod("oom", worker_image, "python3 -c 'x = b\"x\" * (500 * 2**20)'",
               container={"resources": {"limits": {"memory": "32Mi"}}})
    core.create_namespaced_pod(ns, body)
    await assert_eventually(lambda: phase_of(core, ns, "oom") == "Failed", within_s=30)
    terminated = core.read_namespaced_pod("oom", ns).status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


async def test_active_deadline_fails_the_pod(
        core: client.CoreV1Api, ns: str, worker_image: str) -> None:
    core.create_namespaced_pod(ns, pod("late", worker_image, "sleep 300",
                                       activeDeadlineSeconds=1, terminationGracePeriodSeconds=1))
    await assert_eventually(lambda: phase_of(core, ns, "late") == "Failed", within_s=15)
    assert core.read_namespaced_pod("late", ns).status.reason == "DeadlineExceeded"


def test_refusals_are_statuses_with_their_codes(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_pod(ns, pod("dup", MISSING_IMAGE, "true"))
    cases: list[tuple[Callable[[], Any], int, str]] = [
        (lambda: core.create_namespaced_pod(ns, pod("dup", MISSING_IMAGE, "true")), 409,
         "AlreadyExists"),
        (lambda: core.create_namespaced_pod(ns, pod("Bad_Name", MISSING_IMAGE, "true")), 422,
         "Invalid"),
        (lambda: core.create_namespaced_pod(
            ns, {"metadata": {"name": "none"}, "spec": {"containers": []}}), 422, "Invalid"),
        (lambda: core.create_namespaced_pod(
            ns, pod("lbl", MISSING_IMAGE, "true", labels={"bad key!": "v"})), 422, "Invalid"),
        (lambda: core.read_namespaced_pod("absent", ns), 404, "NotFound"),
        (lambda: core.create_namespaced_pod("no-such-ns", pod("p", MISSING_IMAGE, "true")), 404,
         "NotFound"),
    ]
    for call, code, reason in cases:
        with pytest.raises(ApiException) as raised:
            call()
        assert raised.value.status == code
        assert f'"reason":"{reason}"' in raised.value.body.replace(" ", "")


def test_injected_create_failure_answers_500_once(
        core: client.CoreV1Api, ns: str, kube_standin: KubeStandIn) -> None:
    kube_standin.fail_next_creates(1, 500)
    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod(ns, pod("flaky", MISSING_IMAGE, "true"))
    assert raised.value.status == 500
    assert '"kind": "Status"' in raised.value.body or '"kind":"Status"' in raised.value.body
    core.create_namespaced_pod(ns, pod("flaky", MISSING_IMAGE, "true"))


def test_node_is_complete_and_has_the_capacity_asked(core: client.CoreV1Api) -> None:
    nodes = core.list_node().items
    assert [n.metadata.name for n in nodes] == ["standin-node"]
    node = nodes[0]
    assert node.status.capacity["cpu"] == "4"
    assert node.status.node_info.kubelet_version
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def test_secret_keeps_data_and_merges_string_data(core: client.CoreV1Api, ns: str) -> None:
    encoded = base64.b64encode(b"one").decode()
    core.create_namespaced_secret(ns, {"metadata": {"name": "s"}, "data": {"a": encoded},
                                       "stringData": {"b": "two"}})
    core.patch_namespaced_secret("s", ns, {"stringData": {"c": "three"}})
    data = core.read_namespaced_secret("s", ns).data
    assert data == {"a": encoded, "b": base64.b64encode(b"two").decode(),
                    "c": base64.b64encode(b"three").decode()}


def test_received_bodies_validate_against_the_schema(
        core: client.CoreV1Api, ns: str, kube_standin: KubeStandIn) -> None:
    core.create_namespaced_pod(ns, pod("valid", MISSING_IMAGE, "true"))
    core.create_namespaced_secret(ns, {"apiVersion": "v1", "kind": "Secret",
                                       "metadata": {"name": "valid"}, "type": "Opaque",
                                       "stringData": {"k": "v"}})
    bodies = [b for kind in ("Pod", "Secret") for b in kube_standin.received(kind)
              if b["metadata"]["name"] == "valid"]
    assert [b["kind"] for b in bodies] == ["Pod", "Secret"]
    for body in bodies:
        kubernetes_validate.validate(body, "1.32", strict=True)


def test_each_caller_s_requests_are_recorded_as_rbac_reads_them(
        kube_standin: KubeStandIn, ns: str, tmp_path: Path) -> None:
    user = f"caller-{uuid.uuid4().hex[:8]}"
    api = config.new_client_from_config(
        config_file=str(kube_standin.kubeconfig_for(user, tmp_path / "kubeconfig")),
        context=kube_standin.context, persist_config=False)
    try:
        caller = client.CoreV1Api(api)
        caller.create_namespaced_secret(ns, {"metadata": {"name": "audited"}})
        caller.read_namespaced_secret("audited", ns)
        caller.patch_namespaced_secret("audited", ns, {"stringData": {"k": "v"}})
        watched = caller.list_namespaced_secret(ns, watch=True, timeout_seconds=1,
                                                _preload_content=False)
        watched.read()
        watched.release_conn()
        caller.delete_namespaced_secret("audited", ns)
        caller.delete_collection_namespaced_pod(ns)
        with pytest.raises(ApiException):  # refused, and asked all the same
            caller.read_namespaced_pod_log("none", ns)
        client.VersionApi(api).get_code()
    finally:
        api.close()
    seen = {(r["verb"], r["resource"], r["namespace"], r["path"])
            for r in kube_standin.requests(user)}
    assert seen == {("create", "secrets", ns, ""), ("get", "secrets", ns, ""),
                    ("patch", "secrets", ns, ""), ("watch", "secrets", ns, ""),
                    ("delete", "secrets", ns, ""), ("deletecollection", "pods", ns, ""),
                    ("get", "pods/log", ns, ""),
                    ("get", "", "", "/version/")}
    assert {r["user"] for r in kube_standin.requests()
            if (r["resource"], r["namespace"]) == ("secrets", ns)} == {user}
