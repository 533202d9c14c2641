"""Rendered workloads run as local processes: each container's command, with the env its pod
would get (ConfigMaps and Secrets resolved from test values) and its mounted Secrets and
emptyDirs as directories, the paths in its env pointing there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.charts import of_kind

Secrets = dict[str, dict[str, str]]  # Secret name -> key -> value
BIN = Path(sys.executable).parent  # where the `hodei` command is installed


@dataclass(frozen=True)
class Process:
    """One container of a rendered workload, ready to run here."""

    workload: str
    container: str
    command: list[str]
    env: dict[str, str]


def processes(objects: list[dict[str, Any]], kind: str, secrets: Secrets,
              root: Path) -> list[Process]:
    """The containers (init containers first) of every ``kind`` object, in order."""
    configs = {c["metadata"]["name"]: c["data"] for c in of_kind(objects, "ConfigMap")}
    found = []
    for obj in of_kind(objects, kind):
        name = obj["metadata"]["name"]
        spec = obj["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            env = _env(container, configs, secrets)
            for mount in container.get("volumeMounts", []):
                if mount["mountPath"] == "/tmp":
                    continue
                local = root / name / mount["name"]
                _fill(local, volumes[mount["name"]], secrets)
                env = {k: _moved(v, mount["mountPath"], local) for k, v in env.items()}
                if mount["mountPath"] == "/home/hodei":
                    env["HOME"] = str(local)
            command = [shutil.which(container["command"][0], path=str(BIN)) or
                       container["command"][0], *container["command"][1:]]
            found.append(Process(name, container["name"], command, env))
    return found


def base_env() -> dict[str, str]:
    """This process's environment without any Hodei setting: only the pod's reach a child."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("HODEI_", "OTEL_"))}


def run(process: Process, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(process.command, env={**base_env(), **process.env},
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def start(process: Process, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(process.command, env={**base_env(), **process.env},
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _env(container: dict[str, Any], configs: dict[str, dict[str, str]],
         secrets: Secrets) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= configs[source["configMapRef"]["name"]]
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def _fill(local: Path, volume: dict[str, Any], secrets: Secrets) -> None:
    """A Secret volume's files (its items, else every key); an emptyDir stays empty."""
    local.mkdir(parents=True, exist_ok=True)
    if "secret" not in volume:
        return
    data = secrets[volume["secret"]["secretName"]]
    items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        path = local / item["path"]
        path.write_text(data[item["key"]])
        path.chmod(0o440)


def _moved(value: str, mount_path: str, local: Path) -> str:
    """``value`` with the mount path it is in (if any) replaced by the local directory."""
    if value == mount_path or value.startswith(f"{mount_path}/"):
        return str(local) + value[len(mount_path):]
    return value
