"""`hodei job run --provider docker` on `hodei dev up` with Docker enabled, on a real engine."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import pytest

from hodei_common.testing import assert_eventually
from hodei_provisioner.providers.docker import LABEL_JOB, LABEL_MANAGED, LABEL_PROVIDER_ID
from tests.cli.conftest import CliResult, run_cli
from tests.e2e.attacks import ALL_REFUSED, ON_THE_AGENT, ON_THE_PLATFORM
from tests.e2e.conftest import Platform, cli_json, job_of, start_platform, stop_platform

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]

CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


@pytest.fixture(scope="module")
def docker_platform(worker_image: str) -> Iterator[Platform]:
    root = Path(tempfile.mkdtemp(prefix="hodei-e2e-docker-"))
    root.chmod(0o755)
    running = start_platform(root / "home", {"HODEI_DOCKER_ENABLED": "1",
                                             "HODEI_WORKER_IMAGE": worker_image})
    try:
        yield running
    finally:
        stop_platform(running)
        shutil.rmtree(root, ignore_errors=True)


async def docker_job(platform: Platform, *args: str, within_s: float = 30) -> CliResult:
    return await run_cli(platform.env, "job", "run", "--provider", "docker", *args,
                         timeout_s=within_s)


async def containers(platform: Platform, engine: docker.DockerClient,
                     **labels: str) -> list[dict[str, Any]]:
    """This platform's managed containers (with ``labels`` too), running or not, as the
    engine lists them (no inspection, which would race their removal)."""
    providers = await cli_json(platform, "provider", "list")
    scope = next(p["id"] for p in providers if p["name"] == "docker")
    wanted = [f"{LABEL_MANAGED}=true", f"{LABEL_PROVIDER_ID}={scope}",
              *(f"{k}={v}" for k, v in labels.items())]
    return list(engine.api.containers(all=True, filters={"label": wanted}))


async def _no_containers_left(platform: Platform, engine: docker.DockerClient) -> None:
    async def none_left() -> bool:
        return await containers(platform, engine) == []

    await assert_eventually(none_left, within_s=15, message="containers left behind")


CASES: list[tuple[list[str], int, str]] = [
    (["--command", "echo hello"], 0, "hello\n"),
    (["--command", "echo Step1 && sleep 1 && echo Step2 && sleep 1 && echo Step3"], 0,
     "Step1\nStep2\nStep3\n"),
    (["--command", 'echo "$MY_VAR $NUM_VAR"', "--env", "MY_VAR=hello_world,NUM_VAR=42"], 0,
     "hello_world 42\n"),
    (["--command", "sh", "--args", "-c 'echo Processing file test.txt && echo Done'"], 0,
     "Processing file test.txt\nDone\n"),
    (["--command", "echo before; exit 3"], 3, "before\n"),
    (["--command", "definitely-not-a-command-xyz"], 127, ""),
    (["--command", "echo started; sleep 60", "--timeout", "2"], 124, "started\n"),
    (["--command", "seq 1 500"], 0, "".join(f"{i}\n" for i in range(1, 501))),
    (["--command", "id -u"], 0, "10001\n"),  # the image's job user, not the agent's root
]


async def test_the_job_types_run_in_containers_and_leave_none_behind(
    docker_platform: Platform, docker_engine: docker.DockerClient,
) -> None:
    results = await asyncio.gather(*(docker_job(docker_platform, *args) for args, _, _ in CASES))
    for (args, code, stdout), result in zip(CASES, results, strict=True):
        assert (result.code, result.stdout) == (code, stdout), (args, result.stderr)
    assert "not found" in results[5].stderr
    jobs = await cli_json(docker_platform, "job", "list", "--limit", str(len(CASES)))
    assert {j["provider"] for j in jobs} == {"docker"}

    async def all_terminated() -> bool:
        workers = await cli_json(docker_platform, "worker", "list")
        return bool(workers) and all(w["state"] == "TERMINATED" for w in workers)

    await assert_eventually(all_terminated, within_s=15)
    workers = {w["id"]: w for w in await cli_json(docker_platform, "worker", "list")}
    for job in jobs:  # each ran in a fresh container of its own
        assert CONTAINER_ID.fullmatch(workers[job["worker_id"]]["provider_resource_id"])
    assert len({j["worker_id"] for j in jobs}) == len(jobs)
    await _no_containers_left(docker_platform, docker_engine)


async def test_a_local_job_never_gets_a_container_and_a_docker_job_only_does(
    docker_platform: Platform, docker_engine: docker.DockerClient,
) -> None:
    local, in_docker = await asyncio.gather(
        run_cli(docker_platform.env, "job", "run", "--command", "cat /proc/1/comm"),
        docker_job(docker_platform, "--command", "cat /proc/1/comm"),
    )
    assert local.code == 0, local.stderr
    assert in_docker.code == 0, in_docker.stderr
    assert in_docker.stdout == "hodei-agent\n"  # the agent is the container's first process
    assert local.stdout != "python\n"
    jobs = await cli_json(docker_platform, "job", "list", "--limit", "2")
    workers = {w["id"]: w for w in await cli_json(docker_platform, "worker", "list")}
    by_provider = {j["provider"]: workers[j["worker_id"]] for j in jobs}
    assert by_provider["local"]["provider"] == "local"
    assert by_provider["local"]["provider_resource_id"].isdigit()  # a pid
    assert by_provider["docker"]["provider"] == "docker"
    assert CONTAINER_ID.fullmatch(by_provider["docker"]["provider_resource_id"])


async def _kill_its_container_once_running(
    platform: Platform, engine: docker.DockerClient, *queue_args: str
) -> str:
    """Queue a Docker job, kill its container once it runs; the job's id."""
    queued = await run_cli(platform.env, "job", "queue", "--provider", "docker", *queue_args)
    job_id = queued.stdout.strip()

    async def running() -> bool:
        return (await job_of(platform, job_id))["state"] == "RUNNING"

    await assert_eventually(running, within_s=20)
    (container,) = await containers(platform, engine, **{LABEL_JOB: job_id})
    engine.api.kill(container["Id"])
    return job_id


async def test_a_container_killed_mid_job_requeues_it_to_succeed_on_attempt_two(
    docker_platform: Platform, docker_engine: docker.DockerClient,
) -> None:
    job_id = await _kill_its_container_once_running(docker_platform, docker_engine,
                                                    "--command", "echo up; sleep 2")

    async def succeeded() -> bool:
        return (await job_of(docker_platform, job_id))["state"] == "SUCCEEDED"

    await assert_eventually(succeeded, within_s=30)
    job = await job_of(docker_platform, job_id)
    assert job["attempt"] == 2
    logs = await run_cli(docker_platform.env, "job", "logs", job_id, "--follow", timeout_s=20)
    assert logs.stdout == "up\nup\n"  # each attempt's line, in order
    await _no_containers_left(docker_platform, docker_engine)


async def test_a_container_killed_on_its_last_attempt_fails_its_job_and_keeps_its_log(
    docker_platform: Platform, docker_engine: docker.DockerClient,
) -> None:
    job_id = await _kill_its_container_once_running(
        docker_platform, docker_engine, "--max-attempts", "1", "--command", "echo up; sleep 60")

    async def ended() -> bool:
        return (await job_of(docker_platform, job_id))["state"] not in {"ASSIGNED", "RUNNING"}

    await assert_eventually(ended, within_s=15)
    job = await job_of(docker_platform, job_id)
    assert job["state"] == "FAILED"
    assert job["error"].startswith("worker lost: ")
    logs = await run_cli(docker_platform.env, "job", "logs", job_id, "--follow", timeout_s=20)
    assert logs.stdout == "up\n"
    worker = next(w for w in await cli_json(docker_platform, "worker", "list")
                  if w["id"] == job["worker_id"])
    assert worker["state"] == "FAILED"
    await _no_containers_left(docker_platform, docker_engine)


async def test_a_job_over_its_memory_limit_fails_as_oomkilled_with_its_log_kept(
    docker_platform: Platform, docker_engine: docker.DockerClient,
) -> None:
    result = await docker_job(
        docker_platform, "--memory", "64m", "--command",
        "echo allocating; python3 -c 'b = bytearray(500 * 2**20); print(len(b))'")
    assert result.code == 137, result.stderr
    assert result.stdout == "allocating\n"
    job = (await cli_json(docker_platform, "job", "list", "--limit", "1"))[0]
    assert (job["state"], job["memory_bytes"]) == ("FAILED", 64 * 2**20)
    assert job["error"].startswith("OOMKilled")
    logs = await run_cli(docker_platform.env, "job", "logs", job["id"])
    assert logs.stdout == "allocating\n"
    await _no_containers_left(docker_platform, docker_engine)


async def test_a_job_whose_agent_the_oom_killer_takes_fails_as_oomkilled(
    docker_platform: Platform, docker_engine: docker.DockerClient,
) -> None:
    # The job cannot make its agent (root, the container's first process) the OOM killer's
    # first choice: the test does it from outside, then the job takes itself out of the
    # first place (which it may) and allocates: the agent dies, and the container with it.
    command = (
        "echo 1000 2>/dev/null > /proc/1/oom_score_adj && echo JOB-RAISED-THE-AGENT; "
        "until [ \"$(cat /proc/1/oom_score_adj)\" = 1000 ]; do sleep 0.05; done; "
        "echo 0 > /proc/self/oom_score_adj && echo protected && "
        "exec python3 -c 'b = bytearray(500 * 2**20)'")
    queued = await run_cli(docker_platform.env, "job", "queue", "--provider", "docker",
                           "--memory", "64m", "--command", command)
    job_id = queued.stdout.strip()
    await assert_eventually(
        lambda: _running(docker_platform, job_id), within_s=20, message="never RUNNING")
    (container,) = await containers(docker_platform, docker_engine, **{LABEL_JOB: job_id})
    run = docker_engine.api.exec_create(
        container["Id"], ["sh", "-c", "echo 1000 > /proc/1/oom_score_adj"], user="0")
    docker_engine.api.exec_start(run["Id"])

    async def ended() -> bool:
        return (await job_of(docker_platform, job_id))["state"] == "FAILED"

    await assert_eventually(ended, within_s=30, message="the job never failed")
    job = await job_of(docker_platform, job_id)
    assert job["error"] == "OOMKilled"
    logs = await run_cli(docker_platform.env, "job", "logs", job_id)
    assert logs.stdout == "protected\n"
    worker = next(w for w in await cli_json(docker_platform, "worker", "list")
                  if w["id"] == job["worker_id"])
    assert (worker["state"], worker["error"]) == (
        "FAILED", "OOMKilled: its container ran out of memory")
    await _no_containers_left(docker_platform, docker_engine)


async def _running(platform: Platform, job_id: str) -> bool:
    return (await job_of(platform, job_id))["state"] == "RUNNING"


async def test_a_job_cannot_read_signal_or_inherit_the_powers_of_its_agent(
    docker_platform: Platform, docker_engine: docker.DockerClient,
) -> None:
    result = await docker_job(docker_platform, "--command", ON_THE_AGENT)
    assert (result.code, result.stdout) == (0, ALL_REFUSED), result.stderr
    (job,) = await cli_json(docker_platform, "job", "list", "--limit", "1")
    assert job["state"] == "SUCCEEDED"
    await _no_containers_left(docker_platform, docker_engine)


async def test_a_hostile_job_finds_no_secret_and_gets_into_neither_nats_nor_postgres(
    docker_platform: Platform, docker_engine: docker.DockerClient,
) -> None:
    """A job's code with the run of its container and the platform's addresses: no
    credential anywhere it can read, NATS refuses it without one, PostgreSQL without the
    password; a job running beside it is untouched."""
    victim = await run_cli(docker_platform.env, "job", "queue", "--command",
                           "sleep 2; echo victim done")
    victim_id = victim.stdout.strip()
    database = urlsplit(docker_platform.endpoints["database_url"])
    target = f"TARGET_NATS={docker_platform.nats_url},TARGET_PG_PORT={database.port}"
    attack = f"/opt/hodei/bin/python - <<'PY'\n{ON_THE_PLATFORM}\nPY"
    result = await docker_job(docker_platform, "--env", target, "--command", attack,
                              within_s=90)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["found"] == []
    assert report["nats"] == "refused: nats: 'Authorization Violation'"
    assert set(report["postgres"].values()) <= {
        "refused: InvalidPasswordError", "refused: InvalidAuthorizationSpecificationError"}, \
        report["postgres"]
    await assert_eventually(
        lambda: _state_is(docker_platform, victim_id, "SUCCEEDED"), within_s=30)
    logs = await run_cli(docker_platform.env, "job", "logs", victim_id)
    assert logs.stdout == "victim done\n"
    await _no_containers_left(docker_platform, docker_engine)


async def _state_is(platform: Platform, job_id: str, state: str) -> bool:
    return bool((await job_of(platform, job_id))["state"] == state)


async def test_at_max_workers_jobs_wait_queued_and_all_run(
    docker_platform: Platform, docker_engine: docker.DockerClient,
) -> None:
    await run_cli(docker_platform.env, "provider", "set", "docker", "--max-workers", "2")
    most = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal most
        while not done.is_set():
            running = [c for c in await containers(docker_platform, docker_engine)
                       if c["State"] in ("created", "running")]
            most = max(most, len(running))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(
            docker_job(docker_platform, "--command", f"sleep 1; echo done {i}", within_s=60)
            for i in range(5)))
    finally:
        done.set()
        await watcher
        await run_cli(docker_platform.env, "provider", "set", "docker", "--max-workers", "8")
    for i, result in enumerate(results):
        assert (result.code, result.stdout) == (0, f"done {i}\n"), result.stderr
    assert 1 <= most <= 2
    jobs = await cli_json(docker_platform, "job", "list", "--limit", "5")
    assert {j["state"] for j in jobs} == {"SUCCEEDED"}
    await _no_containers_left(docker_platform, docker_engine)



async def test_a_missing_worker_image_fails_the_job_at_once_not_worker_after_worker(
    docker_platform: Platform, docker_engine: docker.DockerClient, worker_image: str,
) -> None:
    changed = await run_cli(docker_platform.env, "provider", "set", "docker", "--image",
                            "hodei-agent:no-such-tag")
    assert changed.code == 0, changed.stderr
    try:
        result = await docker_job(docker_platform, "--command", "echo never", within_s=15)
    finally:
        await run_cli(docker_platform.env, "provider", "set", "docker", "--image",
                      worker_image)
    assert result.code == 1
    job = (await cli_json(docker_platform, "job", "list", "--limit", "1"))[0]
    assert (job["state"], job["attempt"]) == ("FAILED", 1)
    assert job["error"].startswith("worker image not found")
    trail = await cli_json(docker_platform, "job", "events", job["id"])
    assert [e["event_type"] for e in trail].count("WorkerFailed") == 1
    await _no_containers_left(docker_platform, docker_engine)
