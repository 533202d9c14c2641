"""The Helm charts, rendered by the real helm: they lint, every object they render is valid
Kubernetes (1.29 and 1.31, strict), the umbrella is the whole platform, and the values that
must agree across services come from its `global` values."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.charts import (
    CHARTS,
    CI_CHART_VALUES,
    CI_VALUES,
    HELM_DIR,
    SERVICE_CHARTS,
    UMBRELLA,
    helm,
    of_kind,
    render,
)

KUBERNETES_VERSIONS = ("1.29", "1.31")
# A development cluster's way: the database URL in plain text, NATS with a password.
DEV = ("--set", "database.existingSecret=", "--set", "database.url=postgresql://h@db/h",
       "--set", "nats.existingSecret=nats-password")
LOCAL = ("--set", "provider=local", "--set", "workers.existingSecret=agent-nats",
         "--set", "home.sizeLimit=1Gi", "--set", "natsKeysSecret=keys")
# Each chart with its defaults, with the CI values (all optional objects on), and the others.
CASES = [(chart, (), "defaults") for chart in (*CHARTS, UMBRELLA)] + \
    [(chart, ("--values", str(CI_CHART_VALUES)), "ci") for chart in CHARTS] + \
    [(UMBRELLA, ("--values", str(CI_VALUES)), "ci")] + \
    [(chart, DEV, "dev") for chart in CHARTS] + [("hodei-provisioner", LOCAL, "local")]
IDS = [f"{chart}-{variant}" for chart, _, variant in CASES]
CASES_ARGS = [(chart, args) for chart, args, _ in CASES]


@pytest.mark.parametrize(("chart", "args"), CASES_ARGS, ids=IDS)
def test_chart_lints_strict(chart: str, args: tuple[str, ...]) -> None:
    done = helm("lint", "--strict", HELM_DIR / chart, *args)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("chart", "args"), CASES_ARGS, ids=IDS)
def test_every_rendered_object_is_valid_kubernetes(chart: str, args: tuple[str, ...]) -> None:
    objects = render(chart, *args)
    assert objects
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_umbrella_is_the_whole_platform() -> None:
    objects = render(UMBRELLA)
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    assert set(deployments) == {f"hodei-{s}" for s in
                                ("api", "relay", "scheduler", "provisioner", "logs", "supervisor")}
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["hodei", "service", name.removeprefix("hodei-")]
    hooks = {j["metadata"]["name"]: j["metadata"]["annotations"]["helm.sh/hook"]
             for j in of_kind(objects, "Job")}
    assert hooks == {"hodei-migrate": "pre-install,pre-upgrade",
                     "hodei-provisioner-provider": "post-install,post-upgrade"}
    assert {o["kind"] for o in objects} >= {"ServiceAccount", "Service", "ConfigMap",
                                            "PodDisruptionBudget", "Role", "RoleBinding"}


def test_global_values_reach_every_service() -> None:
    objects = render(UMBRELLA, "--values", str(CI_VALUES))
    configs = {c["metadata"]["name"]: c["data"] for c in of_kind(objects, "ConfigMap")}
    for deployment in of_kind(objects, "Deployment"):
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "registry.example/hodei:1.2.3"
        assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
        config = configs[deployment["metadata"]["name"]]
        assert config["HODEI_NATS_URL"] == "nats://nats.nats.svc:4222"
        assert config["HODEI_METRICS_ADDR"] == "0.0.0.0:9500"
        assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318"
        assert config["HODEI_LOG_LEVEL"] == "DEBUG"
        assert _secret_env(container)["HODEI_DATABASE_URL"] == ("hodei-db", "dsn")
        own = f"{deployment['metadata']['labels']['app.kubernetes.io/name']}.creds"
        assert config["HODEI_CREDS"] == f"/etc/hodei/nats/{own}"
        (creds,) = [v for v in pod["spec"]["volumes"] if v["name"] == "nats-creds"]
        assert creds["secret"]["secretName"] == "hodei-nats-creds"
        assert [i["key"] for i in creds["secret"]["items"]] == [own]  # its own file alone
    (migrate,) = of_kind(objects, "Job")[:1]
    env = {e["name"]: e.get("value") for e in
           migrate["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HODEI_HEARTBEAT_INTERVAL_S"] == "2"
    assert env["HODEI_LOGS_MAX_AGE_S"] == "1209600"


def test_a_service_chart_alone_uses_its_own_values() -> None:
    objects = render("hodei-api", "--set", "image.repository=mine/hodei",
                     "--set", "nats.url=nats://elsewhere:4222")
    (deployment,) = of_kind(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "mine/hodei:0.1.0"
    (config,) = of_kind(objects, "ConfigMap")
    assert config["data"]["HODEI_NATS_URL"] == "nats://elsewhere:4222"


@pytest.mark.parametrize("chart", SERVICE_CHARTS)
def test_pods_are_probed_scraped_locked_down_and_rolled_by_their_config(chart: str) -> None:
    objects = render(chart)
    (deployment,) = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9464"
    assert annotations["prometheus.io/path"] == "/metrics"
    (container,) = pod["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    token = pod["spec"]["automountServiceAccountToken"]
    assert token is (chart == "hodei-provisioner")  # only it calls the Kubernetes API

    changed = render(chart, "--set", "logLevel=DEBUG")
    (rolled,) = of_kind(changed, "Deployment")
    assert rolled["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != \
        annotations["checksum/config"]


def test_service_monitor_is_optional() -> None:
    assert not of_kind(render("hodei-api"), "ServiceMonitor")
    (monitor,) = of_kind(render("hodei-api", "--set", "serviceMonitor.enabled=true",
                                "--set", "serviceMonitor.labels.release=prom"),
                         "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics",
                                             "interval": "30s"}]
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_nats_network_policy_admits_platform_pods_and_agents_only() -> None:
    assert not of_kind(render(UMBRELLA), "NetworkPolicy")
    objects = render(UMBRELLA, "--values", str(CI_VALUES))
    (policy,) = [p for p in of_kind(objects, "NetworkPolicy")
                 if p["metadata"]["name"] == "hodei-nats"]
    clients, monitoring = policy["spec"]["ingress"]
    assert clients["ports"] == [{"port": 4222, "protocol": "TCP"}]
    assert clients["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "hodei"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hodei-jobs"}},
         "podSelector": {"matchLabels": {"hodei.managed": "true"}}},
    ]
    assert monitoring["ports"] == [{"port": 8222, "protocol": "TCP"}]


def _secret_env(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"],
                        e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env", []) if "valueFrom" in e}
