"""Bad values are refused by helm itself (each chart's values.schema.json), in a message
naming the field, before anything renders."""

from __future__ import annotations

import pytest

from tests.deploy.charts import CHARTS, HELM_DIR, UMBRELLA, helm

REFUSALS = [
    # (chart, helm arguments, what the message must say)
    ("hodei-api", ("--set", "replicaCount=-1"), "replicaCount: Must be greater than or equal to 0"),
    (UMBRELLA, ("--set", "hodei-scheduler.replicaCount=-2"),
     "replicaCount: Must be greater than or equal to 0"),
    ("hodei-relay", ("--set-string", "replicaCount=two"),
     "replicaCount: Invalid type. Expected: integer, given: string"),
    (UMBRELLA, ("--set-string", "global.metrics.port=http"),
     "global.metrics.port: Invalid type. Expected: integer, given: string"),
    ("hodei-logs", ("--set", "probes.enabled=maybe"),
     "probes.enabled: Invalid type. Expected: boolean, given: string"),
    ("hodei-provisioner", ("--set", "provider=docker"),
     'provider: provider must be one of the following: "kubernetes", "local"'),
    (UMBRELLA, ("--set", "hodei-provisioner.provider=nomad"),
     'provider: provider must be one of the following: "kubernetes", "local"'),
    ("hodei-supervisor", ("--set", "replicas=2"), "Additional property replicas is not allowed"),
    ("hodei-migrate", ("--set", "heartbeatIntervalSeconds=-1"), "heartbeatIntervalSeconds"),
    ("hodei-provisioner", ("--set", "workers.namespace=Not_A_Namespace"),
     "workers.namespace: Does not match pattern"),
]


@pytest.mark.parametrize(("chart", "args", "message"), REFUSALS,
                         ids=[f"{c}-{' '.join(a)}" for c, a, _ in REFUSALS])
def test_bad_values_are_refused_naming_the_field(chart: str, args: tuple[str, ...],
                                                 message: str) -> None:
    done = helm("template", "hodei", HELM_DIR / chart, *args)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_local_provisioner_with_several_replicas_is_refused_in_one_line() -> None:
    done = helm("template", "hodei", HELM_DIR / "hodei-provisioner",
                "--set", "provider=local", "--set", "replicaCount=2")
    assert done.returncode != 0
    assert "replicaCount: 2 with provider local; it runs one replica" in done.stderr


@pytest.mark.parametrize("chart", [*CHARTS, UMBRELLA])
def test_every_chart_has_a_values_schema(chart: str) -> None:
    assert (HELM_DIR / chart / "values.schema.json").is_file()
