"""The Compose stack: what its files say (Compose's own model of them, with and without the
observability profile and the host-network override), and that `up` of it runs a Docker job
end to end on a real engine, with images built here, and `down -v` leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from hodei_common.embedded.process import free_port
from hodei_common.testing import assert_eventually
from hodei_common.testing.docker import DEFAULT_SOCKET
from hodei_provisioner.providers.base import LABEL_PROVIDER_ID
from tests.cli.conftest import run_cli
from tests.deploy.compose import (
    HOST_NETWORK,
    PROMETHEUS_CONFIG,
    SERVICES,
    STACK,
    compose,
    config,
)
from tests.deploy.images import nats_image, platform_image, postgres_image
from tests.deploy.test_env_names import (
    NOT_YET_READ,
    READ_ELSEWHERE,
    SETTINGS,
    env_names,
)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
IMAGE_VARIABLES = {"HODEI_IMAGE": "registry.test/hodei:1", "HODEI_NATS_IMAGE": "mirror/nats:1",
                   "HODEI_POSTGRES_IMAGE": "mirror/postgres:1",
                   "HODEI_JAEGER_IMAGE": "mirror/jaeger:2",
                   "HODEI_PROMETHEUS_IMAGE": "mirror/prometheus:3"}
OBSERVABILITY = {"COMPOSE_PROFILES": "observability"}


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {key: value or "" for key, value in (service.get("environment") or {}).items()}


def test_every_image_is_a_variable_defaulting_to_the_official_one() -> None:
    named = config({**IMAGE_VARIABLES, **OBSERVABILITY})["services"]
    images = {name: service["image"] for name, service in named.items()}
    assert images == {
        **{name: "registry.test/hodei:1" for name in (*SERVICES, "init", "migrate",
                                                      "providers")},
        "nats": "mirror/nats:1", "postgres": "mirror/postgres:1", "jaeger": "mirror/jaeger:2",
        "prometheus": "mirror/prometheus:3",
    }
    defaults = config(OBSERVABILITY)["services"]
    assert defaults["nats"]["image"] == "nats:2.10"
    assert defaults["postgres"]["image"] == "postgres:16"
    assert defaults["jaeger"]["image"].startswith("jaegertracing/jaeger:2.")
    assert defaults["prometheus"]["image"].startswith("prom/prometheus:v3.")
    assert _env(defaults["providers"])["HODEI_WORKER_IMAGE"] == "hodei-agent:latest"


def test_only_the_provisioner_gets_the_docker_engine_in_the_socket_group() -> None:
    services = config({"HODEI_DOCKER_SOCKET": "/run/engine.sock",
                       "HODEI_DOCKER_GID": "4242"})["services"]
    mounts = {name: [v for v in service.get("volumes", []) if v["type"] == "bind"]
              for name, service in services.items()}
    assert [(v["source"], v["target"]) for v in mounts.pop("provisioner")] == \
        [("/run/engine.sock", "/var/run/docker.sock")]
    assert all(not binds for binds in mounts.values()), mounts
    assert services["provisioner"]["group_add"] == ["4242"]
    assert all("group_add" not in s for name, s in services.items() if name != "provisioner")


def test_the_providers_step_enables_docker_on_the_stacks_network_and_disables_local() -> None:
    model = config({"HODEI_NETWORK": "hodei-x", "HODEI_WORKER_IMAGE": "agents:7"})
    providers = model["services"]["providers"]
    # `config` writes the container's `$` as `$$`, so that its output reads back the same.
    script = " ".join(providers["command"]).replace("$$", "$")
    assert 'hodei provider set docker --enable --image "$HODEI_WORKER_IMAGE"' in script
    assert '--network "$HODEI_WORKER_NETWORK"' in script
    assert "hodei provider set local --disable" in script
    assert _env(providers)["HODEI_WORKER_IMAGE"] == "agents:7"
    assert _env(providers)["HODEI_WORKER_NETWORK"] == "hodei-x"
    assert model["networks"]["default"]["name"] == "hodei-x"
    assert providers["depends_on"]["api"]["condition"] == "service_healthy"
    # The agents' NATS is the one the services reach on that network.
    provisioner = _env(model["services"]["provisioner"])
    assert provisioner["HODEI_PROVISIONER_AGENT_NATS_URL"] == provisioner["HODEI_NATS_URL"]


def test_a_missing_socket_group_is_one_clear_error() -> None:
    done = compose("config", "-q", env={})
    assert done.returncode != 0
    assert "HODEI_DOCKER_GID" in done.stderr
    assert "stat -c %g /var/run/docker.sock" in done.stderr


def test_the_observability_profile_adds_jaeger_and_prometheus_fed_by_every_service() -> None:
    services = config(OBSERVABILITY)["services"]
    assert services["jaeger"]["profiles"] == ["observability"]
    assert services["prometheus"]["profiles"] == ["observability"]
    assert {p["target"] for p in services["jaeger"]["ports"]} == {16686}
    for name in SERVICES:
        env = _env(services[name])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", name
    scraped = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    (job,) = scraped
    assert job["metrics_path"] == "/metrics"
    (lookup,) = job["dns_sd_configs"]
    assert sorted(lookup["names"]) == sorted(SERVICES)
    for name in SERVICES:
        env = _env(services[name])
        assert env["HODEI_METRICS_ADDR"] == f"0.0.0.0:{lookup['port']}", name
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"]), name
    # The flag form is valid too (it starts the two; the services' export needs the
    # variable, which is what the README says).
    assert {"jaeger", "prometheus"} <= set(config({}, (STACK,), "observability")["services"])


def test_without_the_profile_no_span_leaves_and_neither_runs() -> None:
    services = config({})["services"]
    assert "jaeger" not in services
    assert "prometheus" not in services
    for name in SERVICES:
        assert _env(services[name])["OTEL_EXPORTER_OTLP_ENDPOINT"] == "", name
    given = config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})["services"]
    assert _env(given["api"])["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"


def test_the_host_network_override_puts_everything_on_127_0_0_1() -> None:
    ports = {"HODEI_NATS_PORT": "14222", "HODEI_POSTGRES_PORT": "15432"}
    services = config(ports, (STACK, HOST_NETWORK))["services"]
    assert services.pop("init")["network_mode"] == "none"
    assert {name: s.get("network_mode") for name, s in services.items()} == \
        {name: "host" for name in services}
    assert not services["nats"].get("ports")
    assert services["nats"]["command"][-4:] == ["-a", "127.0.0.1", "-p", "14222"]
    assert _env(services["postgres"])["PGPORT"] == "15432"
    metrics = set()
    for name in (*SERVICES, "migrate"):
        env = _env(services[name])
        assert env["HODEI_NATS_URL"] == "nats://127.0.0.1:14222", name
        assert env["HODEI_DATABASE_URL"] == "postgresql://hodei:hodei@127.0.0.1:15432/hodei"
        if name != "migrate":
            assert env["HODEI_METRICS_ADDR"].startswith("127.0.0.1:"), name
            metrics.add(env["HODEI_METRICS_ADDR"])
    assert len(metrics) == len(SERVICES)
    assert _env(services["provisioner"])["HODEI_PROVISIONER_AGENT_NATS_URL"] == \
        "nats://127.0.0.1:14222"
    assert _env(services["providers"])["HODEI_WORKER_NETWORK"] == "host"


# The providers step's own variables, read by its shell script rather than by `hodei`.
SCRIPT_VARIABLES = {"HODEI_WORKER_IMAGE", "HODEI_WORKER_NETWORK"}


@pytest.mark.parametrize("files", [(STACK,), (STACK, HOST_NETWORK)], ids=["bridge", "host"])
def test_every_env_name_the_stack_sets_is_read_by_its_process(files: tuple[Path, ...]) -> None:
    services = config(OBSERVABILITY, files)["services"]
    processes = {**{name: name for name in SERVICES}, "migrate": "migrate",
                 "providers": "provider"}
    for name, process in processes.items():
        given = set(_env(services[name])) - SCRIPT_VARIABLES
        unread = given - env_names(SETTINGS[process]) - READ_ELSEWHERE - NOT_YET_READ
        assert not unread, f"{name} is given {sorted(unread)}"


# --- the stack on a real engine ----------------------------------------------------------
@pytest.fixture(scope="module")
def stack_images(docker_engine: docker.DockerClient, worker_image: str) -> dict[str, str]:
    """The images variables of a stack made of images built here (no registry)."""
    return {"HODEI_IMAGE": platform_image(docker_engine),
            "HODEI_WORKER_IMAGE": worker_image,
            "HODEI_NATS_IMAGE": nats_image(docker_engine),
            "HODEI_POSTGRES_IMAGE": postgres_image(docker_engine)}


@pytest.fixture
def stack_env(stack_images: dict[str, str]) -> Iterator[dict[str, str]]:
    """A project of its own, on the host's network (the test engine has no bridge), every
    port a free one; `down -v` after the test, whatever happened."""
    host = os.environ.get("DOCKER_HOST", "unix://" + DEFAULT_SOCKET)
    socket = host.removeprefix("unix://")
    project = f"hodei-test-{uuid.uuid4().hex[:8]}"
    env = {**stack_images,
           "COMPOSE_PROJECT_NAME": project,
           "HODEI_NETWORK": project,
           "HODEI_DOCKER_SOCKET": socket,
           "HODEI_DOCKER_GID": str(os.stat(socket).st_gid),
           "HODEI_NATS_PORT": str(free_port()),
           "HODEI_POSTGRES_PORT": str(free_port())}
    for name in SERVICES:
        env[f"HODEI_{name.upper()}_METRICS_PORT"] = str(free_port())
    yield env
    compose("down", "-v", "--timeout", "20", env=env, files=(STACK, HOST_NETWORK))


@pytest.mark.docker
@pytest.mark.e2e
@pytest.mark.slow
async def test_compose_up_runs_a_docker_job_and_down_leaves_nothing_behind(
        stack_env: dict[str, str], docker_engine: docker.DockerClient, tmp_path: Path) -> None:
    files = (STACK, HOST_NETWORK)
    project = stack_env["COMPOSE_PROJECT_NAME"]
    up = compose("up", "-d", env=stack_env, files=files)
    assert up.returncode == 0, up.stderr + _logs(stack_env)
    (providers,) = _containers(docker_engine, project, "providers")
    done = providers.wait(timeout=120)
    assert done["StatusCode"] == 0, _logs(stack_env)

    creds = compose("exec", "-T", "api", "cat", "/creds/hodei-cli.creds", env=stack_env,
                    files=files)
    assert creds.returncode == 0, creds.stderr
    creds_file = tmp_path / "cli.creds"
    creds_file.write_text(creds.stdout)
    creds_file.chmod(0o600)
    cli_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
               "HODEI_NATS_URL": f"nats://127.0.0.1:{stack_env['HODEI_NATS_PORT']}",
               "HODEI_CREDS": str(creds_file)}
    job = await run_cli(cli_env, "job", "run", "--provider", "docker", "--command",
                        "echo hello from compose", timeout_s=120)
    assert (job.code, job.stdout) == (0, "hello from compose\n"), job.stderr + _logs(stack_env)
    # It ran in a container of the engine; gone once the job ended, before `down`.
    (ran,) = await _cli_json(cli_env, "job", "list")
    workers = {w["id"]: w for w in await _cli_json(cli_env, "worker", "list")}
    worker = workers[ran["worker_id"]]
    assert (ran["provider"], worker["provider"]) == ("docker", "docker")
    assert re.fullmatch(r"[0-9a-f]{64}", worker["provider_resource_id"]), worker
    providers_rows = await _cli_json(cli_env, "provider", "list")
    scope = next(p["id"] for p in providers_rows if p["name"] == "docker")

    async def no_worker_left() -> bool:
        return docker_engine.containers.list(
            all=True, filters={"label": [f"{LABEL_PROVIDER_ID}={scope}"]}) == []

    await assert_eventually(no_worker_left, within_s=15, message="worker container left")

    down = compose("down", "-v", "--timeout", "20", env=stack_env, files=files)
    assert down.returncode == 0, down.stderr
    owned = {"label": [f"{PROJECT_LABEL}={project}"]}
    assert docker_engine.containers.list(all=True, filters=owned) == []
    assert docker_engine.volumes.list(filters=owned) == []
    assert docker_engine.networks.list(filters=owned) == []


async def _cli_json(env: dict[str, str], *args: str) -> Any:
    done = await run_cli(env, *args, "-o", "json")
    assert done.code == 0, done.stderr
    return json.loads(done.stdout)


def _containers(client: docker.DockerClient, project: str, service: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": [
        f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={service}"]}))


def _logs(env: dict[str, str]) -> str:
    done = compose("logs", "--no-color", "--tail", "40", env=env, files=(STACK, HOST_NETWORK))
    return "\n" + done.stdout[-12000:]

