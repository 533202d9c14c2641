"""The provisioner's Role grants exactly what the Kubernetes provider calls: the calls are
read from the provider's source, so a new call without its permission (or a permission no
call needs) fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from hodei_provisioner.providers import kubernetes, kubernetes_watch
from tests.deploy.charts import UMBRELLA, of_kind, render

# CoreV1Api's methods on namespaced objects: <action>_namespaced_<kind>.
CALL = re.compile(r"^(?P<action>create|read|list|replace|patch|delete)_namespaced_(?P<kind>\w+)$")
VERB = {"create": "create", "read": "get", "list": "list", "replace": "update",
        "patch": "patch", "delete": "delete"}
PLURAL = {"pod": "pods", "secret": "secrets"}


def called_permissions(*modules: object) -> set[tuple[str, str]]:
    """(resource, verb) of every CoreV1Api call in the modules' source; a list with
    ``watch=True`` is a watch."""
    found: set[tuple[str, str]] = set()
    for module in modules:
        tree = ast.parse(Path(str(getattr(module, "__file__", ""))).read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            match = CALL.match(node.func.attr)
            if match is None:
                continue
            resource = PLURAL[match["kind"]]
            watch = any(k.arg == "watch" and isinstance(k.value, ast.Constant) and k.value.value
                        for k in node.keywords)
            found.add((resource, "watch" if watch else VERB[match["action"]]))
    return found


def test_the_declared_permissions_are_the_calls_the_provider_makes() -> None:
    called = called_permissions(kubernetes, kubernetes_watch)
    assert called == set(kubernetes.API_PERMISSIONS)
    assert len(called) == len(kubernetes.API_PERMISSIONS)  # declared once each


def test_the_role_grants_exactly_the_declared_permissions_in_the_workers_namespace() -> None:
    objects = render(UMBRELLA, "--set", "hodei-provisioner.workers.namespace=jobs")
    (role,) = of_kind(objects, "Role")
    assert role["metadata"]["namespace"] == "jobs"
    granted = set()
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        granted |= {(r, v) for r in rule["resources"] for v in rule["verbs"]}
    assert granted == set(kubernetes.API_PERMISSIONS)
    (binding,) = of_kind(objects, "RoleBinding")
    assert binding["metadata"]["namespace"] == "jobs"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hodei-provisioner",
                                    "namespace": "hodei"}]


def test_the_local_provider_gets_no_role_and_no_token() -> None:
    objects = render("hodei-provisioner", "--set", "provider=local")
    assert not of_kind(objects, "Role")
    assert not of_kind(objects, "Job")  # the provider rows are left as they are
    (deployment,) = of_kind(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["shareProcessNamespace"] is True
    assert deployment["spec"]["replicas"] == 1


def test_the_provider_hook_enables_kubernetes_in_cluster_and_disables_local() -> None:
    objects = render("hodei-provisioner", "--set", "workers.namespace=jobs",
                     "--set", "workers.image=reg/agent:1", "--set", "nats.credsSecret=creds",
                     "--set", "workers.natsUrl=nats://nats.jobs:4222")
    (job,) = of_kind(objects, "Job")
    spec = job["spec"]["template"]["spec"]
    (enable,) = spec["initContainers"]
    assert enable["command"] == [
        "hodei", "provider", "set", "kubernetes", "--enable", "--in-cluster",
        "--namespace", "jobs", "--image", "reg/agent:1",
        "--agent-nats-url", "nats://nats.jobs:4222", "--max-workers", "16"]
    (disable,) = spec["containers"]
    assert disable["command"] == ["hodei", "provider", "set", "local", "--disable"]
    (creds,) = [v for v in spec["volumes"] if v["name"] == "nats-creds"]
    assert creds["secret"]["items"] == [{"key": "hodei-cli.creds", "path": "hodei-cli.creds"}]
