"""The umbrella chart runs: its rendered migrate hook, six Deployments and provider hook,
each container's command and env taken from the manifests (Secrets resolved from test
values), run as local processes against a secured nats-server, a real PostgreSQL and the
Kubernetes stand-in, and a job runs end to end through them as a pod. A chart whose commands
or env drift from the code fails here.

The provisioner has the chart's default provider, kubernetes, set up by the chart's own
provider hook with one change the stand-in requires: it serves plain HTTP and mounts no
service-account token, so the hook's ``--in-cluster`` becomes a kubeconfig of the stand-in
whose token names the provisioner's ServiceAccount. Every request the stand-in then gets from
it must be one the chart's Role grants."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from kubernetes import config
from kubernetes.client import CoreV1Api

from hodei_common.contracts import subjects
from hodei_common.embedded import NatsServer, PostgresServer
from hodei_common.embedded.process import free_port
from hodei_common.natsauth import Trust, permissions
from hodei_common.testing import assert_eventually
from hodei_common.testing.kube import KubeStandIn
from hodei_provisioner.providers.kubernetes_pods import LABEL_JOB, LABEL_MANAGED
from tests.deploy.charts import UMBRELLA, of_kind, render
from tests.deploy.pods import Process, base_env, processes, run, start

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.docker,
              pytest.mark.kubernetes, pytest.mark.e2e, pytest.mark.slow]

TEST_IDENTITY = "hodei-test"
SERVICES = ("api", "relay", "scheduler", "provisioner", "logs", "supervisor")


@pytest.fixture
def stand() -> Iterator[tuple[Path, Trust, NatsServer, PostgresServer]]:
    root = Path(tempfile.mkdtemp(prefix="hodei-chart-"))
    root.chmod(0o755)  # PostgreSQL runs unprivileged when this runs as root
    trust = Trust.create()
    nats_server = NatsServer(root / "nats", auth=trust)
    postgres = PostgresServer(root / "postgres")
    nats_server.start()
    try:
        postgres.start()
        try:
            asyncio.run(_create_database(postgres))
            yield root, trust, nats_server, postgres
        finally:
            postgres.stop()
    finally:
        nats_server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def workers_namespace(kube_standin: KubeStandIn) -> str:
    name = f"hodei-chart-{uuid.uuid4().hex[:8]}"
    kube_standin.create_namespace(name)
    return name


def test_the_rendered_umbrella_runs_a_job_as_a_pod(
        stand: tuple[Path, Trust, NatsServer, PostgresServer], kube_standin: KubeStandIn,
        workers_namespace: str, worker_image: str) -> None:
    root, trust, nats_server, postgres = stand
    secrets = _secrets(root, trust, postgres.url("hodei"))
    objects = render(UMBRELLA, "--set", f"global.nats.url={nats_server.url}",
                     "--set", "global.nats.credsSecret=hodei-nats-creds",
                     "--set", "global.database.existingSecret=hodei-db",
                     "--set-json", "global.heartbeatIntervalSeconds=0.5",
                     "--set", "hodei-provisioner.natsKeysSecret=hodei-nats-keys",
                     "--set", f"hodei-provisioner.workers.namespace={workers_namespace}",
                     "--set", f"hodei-provisioner.workers.image={worker_image}")
    pods = root / "pods"
    (migrate,) = processes(_hooked(objects, "pre-install"), "Job", secrets, pods)
    done = run(migrate)
    assert done.returncode == 0, done.stderr
    assert "schema is at version" in done.stdout

    services = _own_metrics_ports(processes(objects, "Deployment", secrets, pods))
    assert sorted(p.command[-1] for p in services) == sorted(SERVICES)
    provisioner = _service_account_user(objects)
    kubeconfig = kube_standin.kubeconfig_for(provisioner, root / "kube" / "kubeconfig")
    logs = root / "logs"
    logs.mkdir()
    running = {p.container: start(p, logs / f"{p.container}.log") for p in services}
    try:
        asyncio.run(_wait_ready(nats_server.url, root / "test.creds", running, logs))
        hook = processes(_hooked(objects, "post-install"), "Job", secrets, pods / "hook")
        assert [p.container for p in hook] == ["enable-kubernetes", "disable-local"]
        for step in hook:
            done = run(_on_standin(step, kubeconfig, kube_standin.context))
            assert done.returncode == 0, done.stderr
        rows = asyncio.run(_providers(postgres.url("hodei")))
        assert rows["local"] == (False, None, {})
        assert rows["kubernetes"] == (True, worker_image, {
            "kubeconfig": str(kubeconfig), "context": kube_standin.context,
            "namespace": workers_namespace, "agent_nats_url": nats_server.url})

        cli = _cli(services, secrets, pods)
        try:
            job = subprocess.run([*cli.command, "job", "run", "--provider", "kubernetes",
                                  "--command", "echo hello from a pod"],
                                 env=cli.env, capture_output=True, text=True, timeout=90,
                                 check=False)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"{e.stderr!r}\n{_tails(logs)}\n"
                                 f"{_tails(kube_standin.dir, 'standin.log')}") from e
        assert (job.returncode, job.stdout) == (0, "hello from a pod\n"), \
            job.stderr + _tails(logs)
        (ran,) = json.loads(subprocess.run(
            [*cli.command, "job", "list", "--limit", "1", "-o", "json"], env=cli.env,
            capture_output=True, text=True, timeout=30, check=True).stdout)
        assert (ran["provider"], ran["state"]) == ("kubernetes", "SUCCEEDED")
        made = [p for p in kube_standin.received("pods")
                if p["metadata"]["labels"].get(LABEL_JOB) == ran["id"]]
        assert len(made) == 1, (ran, [p["metadata"] for p in made], _tails(logs))
        (pod,) = made
        assert pod["spec"]["containers"][0]["image"] == worker_image
        asyncio.run(_none_left(kube_standin, workers_namespace))

        asked = kube_standin.requests(provisioner)
        assert {(a["resource"], a["verb"]) for a in asked} >= {("pods", "create"),
                                                              ("pods", "watch")}
        assert _not_granted(objects, asked) == []
    finally:
        for proc in running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in running.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _hooked(objects: list[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
    """The objects without the Jobs of other hook phases than ``phase``."""
    return [o for o in objects if o["kind"] != "Job" or phase in o["metadata"].get(
        "annotations", {}).get("helm.sh/hook", "").split(",")]


def _service_account_user(objects: list[dict[str, Any]]) -> str:
    """The user Kubernetes names the provisioner's pods' ServiceAccount, the Role's subject."""
    (binding,) = of_kind(objects, "RoleBinding")
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount"
    return f"system:serviceaccount:{subject['namespace']}:{subject['name']}"


def _on_standin(step: Process, kubeconfig: Path, context: str) -> Process:
    """The hook's step with the stand-in's kubeconfig where the chart says in-cluster."""
    if step.container != "enable-kubernetes":
        return step
    assert "--in-cluster" in step.command, step.command
    at = step.command.index("--in-cluster")
    command = [*step.command[:at], "--kubeconfig", str(kubeconfig), "--context", context,
               *step.command[at + 1:]]
    return replace(step, command=command)


def _not_granted(objects: list[dict[str, Any]],
                 asked: list[dict[str, str]]) -> list[dict[str, str]]:
    """The requests the provisioner's Role does not allow: outside the Role's namespace, or
    a (resource, verb) none of its rules grants."""
    (role,) = of_kind(objects, "Role")
    granted = {(r, v) for rule in role["rules"] if rule["apiGroups"] == [""]
               for r in rule["resources"] for v in rule["verbs"]}
    return [a for a in asked if a["namespace"] != role["metadata"]["namespace"]
            or (a["resource"], a["verb"]) not in granted]


async def _none_left(standin: KubeStandIn, namespace: str) -> None:
    """Until the provider's pods and token Secrets in ``namespace`` are all deleted."""
    api = config.new_client_from_config(config_file=str(standin.kubeconfig),
                                        context=standin.context, persist_config=False)
    core = CoreV1Api(api)
    selector = f"{LABEL_MANAGED}=true"

    def none_left() -> bool:
        return not core.list_namespaced_pod(namespace, label_selector=selector).items \
            and not core.list_namespaced_secret(namespace, label_selector=selector).items

    try:
        await assert_eventually(none_left, within_s=20, message="pods or Secrets left")
    finally:
        api.close()


def _cli(services: list[Process], secrets: dict[str, dict[str, str]], pods: Path) -> Process:
    """The `hodei` CLI as the platform's admin: the api pod's env, with the CLI's creds."""
    (api,) = [p for p in services if p.container == "api"]
    creds = pods / "cli" / "hodei-cli.creds"
    creds.parent.mkdir(parents=True)
    creds.write_text(secrets["hodei-nats-creds"]["hodei-cli.creds"])
    return Process("cli", "cli", [api.command[0]],
                   {**base_env(), **api.env, "HODEI_CREDS": str(creds)})


def _own_metrics_ports(services: list[Process]) -> list[Process]:
    """Six pods each listen on the metrics port; six processes on one host cannot."""
    return [replace(p, env={**p.env, "HODEI_METRICS_ADDR": f"127.0.0.1:{free_port()}"})
            for p in services]


def _secrets(root: Path, trust: Trust, database_url: str) -> dict[str, dict[str, str]]:
    """The Secrets the chart is told of, as `hodei auth init` and an operator make them."""
    creds, keys = root / "creds", root / "keys"
    trust.write_creds(creds)
    trust.save(keys)
    trust.write_revoker_creds(keys)
    trust.user(permissions.everything(TEST_IDENTITY)).write(root / "test.creds")
    return {
        "hodei-db": {"url": database_url},
        "hodei-nats-creds": {p.name: p.read_text() for p in creds.iterdir()},
        "hodei-nats-keys": {name: (keys / name).read_text()
                            for name in ("signing.nk", "operator.nk", "revoker.creds")},
    }


async def _providers(url: str) -> dict[str, tuple[bool, str | None, dict[str, object]]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT name, enabled, image, settings FROM provider_configs")
    finally:
        await conn.close()
    return {r["name"]: (r["enabled"], r["image"], json.loads(r["settings"])) for r in rows}


async def _create_database(server: PostgresServer) -> None:
    admin = await asyncpg.connect(server.url())
    try:
        await admin.execute("CREATE DATABASE hodei")
    finally:
        await admin.close()


async def _wait_ready(url: str, creds: Path, running: dict[str, subprocess.Popen[bytes]],
                      logs: Path, timeout_s: float = 60.0) -> None:
    """Until every service answers `$SRV.PING`; one that exited fails the test."""
    nc = await nats.connect(url, user_credentials=str(creds),
                            inbox_prefix=subjects.inbox_prefix(TEST_IDENTITY))
    try:
        deadline = time.monotonic() + timeout_s
        for name in SERVICES:
            while True:
                exited = {n: p.returncode for n, p in running.items() if p.poll() is not None}
                assert not exited, f"exited: {exited}\n{_tails(logs)}"
                try:
                    await nc.request(f"$SRV.PING.{subjects.service_name(name)}", b"",
                                     timeout=0.5)
                    break
                except (nats.errors.Error, TimeoutError):
                    assert time.monotonic() < deadline, f"{name} is not up\n{_tails(logs)}"
                    await asyncio.sleep(0.2)
    finally:
        await nc.close()


def _tails(logs: Path, pattern: str = "*.log") -> str:
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-15:])
                     for p in sorted(logs.glob(pattern)))
