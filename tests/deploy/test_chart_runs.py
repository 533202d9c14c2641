"""The umbrella chart runs: its rendered migrate hook, six Deployments and provider hook,
each container's command and env taken from the manifests (Secrets resolved from test
values), run as local processes against a secured nats-server and a real PostgreSQL, and a
job runs end to end through them. A chart whose commands or env drift from the code fails
here. The provisioner runs with the local provider (its agents are processes): the
Kubernetes provider's pods would need a cluster. Its provider hook, as the chart renders it
by default, then runs against the same API and must set the rows it says."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import nats
import pytest

from hodei_common.contracts import subjects
from hodei_common.embedded import NatsServer, PostgresServer
from hodei_common.embedded.process import free_port
from hodei_common.natsauth import Trust, permissions
from tests.deploy.charts import UMBRELLA, render
from tests.deploy.pods import Process, base_env, processes, run, start

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.slow]

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


def test_the_rendered_umbrella_runs_a_job(
        stand: tuple[Path, Trust, NatsServer, PostgresServer]) -> None:
    root, trust, nats_server, postgres = stand
    secrets = _secrets(root, trust, postgres.url("hodei"))
    chart_values = ("--set", f"global.nats.url={nats_server.url}",
                    "--set", "global.nats.credsSecret=hodei-nats-creds",
                    "--set", "global.database.existingSecret=hodei-db",
                    "--set-json", "global.heartbeatIntervalSeconds=0.5")
    objects = render(UMBRELLA, *chart_values, "--set", "hodei-provisioner.provider=local",
                     "--set", "hodei-provisioner.natsKeysSecret=hodei-nats-keys")
    pods = root / "pods"
    (migrate,) = processes(objects, "Job", secrets, pods)
    done = run(migrate)
    assert done.returncode == 0, done.stderr
    assert "schema is at version" in done.stdout

    services = _own_metrics_ports(processes(objects, "Deployment", secrets, pods))
    assert sorted(p.command[-1] for p in services) == sorted(SERVICES)
    logs = root / "logs"
    logs.mkdir()
    running = {p.container: start(p, logs / f"{p.container}.log") for p in services}
    try:
        asyncio.run(_wait_ready(nats_server.url, root / "test.creds", running, logs))
        cli = _cli(services, secrets, pods)
        try:
            job = subprocess.run([*cli.command, "job", "run", "--provider", "local",
                                  "--command", "echo hello from the chart"],
                                 env=cli.env, capture_output=True, text=True, timeout=60,
                                 check=False)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"{e.stderr!r}\n{_tails(logs)}\n{_tails(pods, '**/*.log')}"
                                 ) from e
        assert (job.returncode, job.stdout) == (0, "hello from the chart\n"), \
            job.stderr + _tails(logs)

        # The Kubernetes provider's hook, as the provisioner chart renders it by default:
        # its commands are accepted by the running API and set the rows they say.
        hook = processes(render("hodei-provisioner", *chart_values,
                                "--set", "workers.namespace=jobs",
                                "--set", "workers.image=registry.example/hodei-agent:1"),
                         "Job", secrets, pods / "hook")
        assert [p.container for p in hook] == ["enable-kubernetes", "disable-local"]
        for step in hook:
            done = run(step)
            assert done.returncode == 0, done.stderr
        rows = asyncio.run(_providers(postgres.url("hodei")))
        assert rows["local"] == (False, None, {})
        assert rows["kubernetes"] == (True, "registry.example/hodei-agent:1", {
            "in_cluster": True, "namespace": "jobs", "agent_nats_url": nats_server.url})
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
