"""Every environment variable a chart gives a process is a setting that process reads: a
renamed setting, or a typo in a chart, fails here rather than being ignored in a pod."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_settings import BaseSettings

from hodei_api.config import ApiSettings
from hodei_cli.connection import CliSettings
from hodei_common.relay import RelaySettings
from hodei_common.settings import Settings
from hodei_logs.config import LogsSettings
from hodei_provisioner.config import ProvisionerSettings
from hodei_scheduler.config import SchedulerSettings
from hodei_supervisor.config import SupervisorSettings
from tests.deploy.charts import CI_VALUES, UMBRELLA, of_kind, render

SETTINGS: dict[str, type[BaseSettings]] = {
    "api": ApiSettings, "relay": RelaySettings, "scheduler": SchedulerSettings,
    "provisioner": ProvisionerSettings, "logs": LogsSettings, "supervisor": SupervisorSettings,
    "migrate": CliSettings, "provider": CliSettings,
}
# Read by a library rather than a settings class.
READ_ELSEWHERE = {"OTEL_EXPORTER_OTLP_ENDPOINT"}  # the OpenTelemetry SDK's exporter
# The /healthz, /readyz and /metrics listener, set on every service ahead of the settings
# field that reads it; once Settings has it, it is checked like the others.
NOT_YET_READ = set() if "metrics_addr" in Settings.model_fields else {"HODEI_METRICS_ADDR"}
LOCAL = ("--set", "hodei-provisioner.provider=local",
         "--set", "hodei-provisioner.natsKeysSecret=keys")
# (values, the processes they run): with local there is no provider hook Job.
VALUES = [((), set(SETTINGS)), (("--values", str(CI_VALUES)), set(SETTINGS)),
          (LOCAL, set(SETTINGS) - {"provider"})]


def env_names(settings: type[BaseSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in settings.model_fields}


def containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], set[str]]]:
    """(process, container, the env names it gets, its ConfigMap's included)."""
    configs = {c["metadata"]["name"]: set(c["data"]) for c in of_kind(objects, "ConfigMap")}
    found = []
    for obj in [*of_kind(objects, "Deployment"), *of_kind(objects, "Job")]:
        spec = obj["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            names = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                names |= configs[source["configMapRef"]["name"]]
            process = container["command"][2] if container["command"][:2] == \
                ["hodei", "service"] else ("migrate" if container["command"][1] == "migrate"
                                           else "provider")
            found.append((process, container, names))
    return found


@pytest.mark.parametrize(("args", "processes"), VALUES, ids=["defaults", "ci", "local"])
def test_every_env_name_a_chart_sets_is_read_by_its_process(args: tuple[str, ...],
                                                            processes: set[str]) -> None:
    seen = set()
    for process, container, names in containers(render(UMBRELLA, *args)):
        unread = names - env_names(SETTINGS[process]) - READ_ELSEWHERE - NOT_YET_READ
        assert not unread, f"{process} ({container['name']}) is given {sorted(unread)}"
        seen.add(process)
    assert seen == processes
