"""Running the real helm on the charts in deploy/helm: the binary, dependencies, rendering."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM_DIR = ROOT / "deploy" / "helm"
HELM = ROOT / ".tools" / "helm"
HERE = Path(__file__).resolve().parent
CI_VALUES = HERE / "ci-values.yaml"
CI_CHART_VALUES = HERE / "ci-chart-values.yaml"

SERVICES = ("api", "relay", "scheduler", "provisioner", "logs", "supervisor")
SERVICE_CHARTS = tuple(f"hodei-{name}" for name in SERVICES)
CHARTS = ("hodei-migrate", *SERVICE_CHARTS)
UMBRELLA = "hodei"


@dataclass(frozen=True)
class Result:
    """What one helm command did."""

    returncode: int
    stdout: str
    stderr: str


def helm(*args: str | Path) -> Result:
    """Run helm (the one `scripts/install` puts in .tools/); missing, the test fails."""
    assert HELM.exists(), f"no helm at {HELM}: run ./scripts/install"
    done = subprocess.run([str(HELM), *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False)
    return Result(done.returncode, done.stdout, done.stderr)


def build_dependencies() -> None:
    """Copy hodei-common into every chart, then every chart into the umbrella's charts/
    (which packages each with what its own charts/ holds, so the umbrella goes last)."""
    for chart in (*CHARTS, UMBRELLA):
        done = helm("dependency", "build", HELM_DIR / chart)
        assert done.returncode == 0, done.stderr


def render(chart: str, *args: str | Path, namespace: str = "hodei") -> list[dict[str, Any]]:
    """The objects `helm template` renders (hooks included), in order."""
    done = helm("template", "hodei" if chart == UMBRELLA else f"test-{chart}",
                HELM_DIR / chart, "--namespace", namespace, *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]
