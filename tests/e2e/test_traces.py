"""One trace per job: from the CLI's submit to the archive of its log, every service and the
agent under one root, each with its own service.name, on the embedded platform (`hodei dev
up`, every service in one process) with local and Docker workers, and across a requeue."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hodei_common.contracts import subjects
from hodei_common.testing import assert_eventually
from tests.cli.conftest import run_cli
from tests.e2e.conftest import Platform, agent_processes, job_of, start_platform, stop_platform
from tests.otlp import OtlpReceiver, ReceivedSpan

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SECRET = "s3cr3t-trace-value"
# The services a local job's trace must hold spans of (the supervisor's part depends on
# what goes wrong: it acts on a job only when its worker falls silent or overruns).
JOB_SERVICES = {"hodei-cli", "hodei-api", "hodei-relay", "hodei-scheduler",
                "hodei-provisioner", "hodei-agent", "hodei-logs"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def _platform(extra_env: dict[str, str]) -> Iterator[Platform]:
    root = Path(tempfile.mkdtemp(prefix="hodei-e2e-trace-"))
    root.chmod(0o755)
    running = start_platform(root / "home", extra_env)
    try:
        yield running
    finally:
        stop_platform(running)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def traced(receiver: OtlpReceiver) -> Iterator[Platform]:
    yield from _platform(receiver.env())


@pytest.fixture(scope="module")
def traced_docker(receiver: OtlpReceiver, worker_image: str) -> Iterator[Platform]:
    # Containers share the host's network (the provider's default), so the agent in one
    # reaches the receiver on 127.0.0.1.
    yield from _platform({**receiver.env(), "HODEI_DOCKER_ENABLED": "1",
                          "HODEI_WORKER_IMAGE": worker_image})


UUID_IN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def one_trace(receiver: OtlpReceiver, job_id: str, services: set[str], *,
              root: str = "cli job run", lost_attempt: int | None = None
              ) -> list[ReceivedSpan]:
    """The job's one trace once it holds spans of ``services`` and its archive, checked:
    every span of the trace names the job, one root, every other span's parent in it.
    ``lost_attempt``: the attempt whose agent was killed, whose run span never ended and so
    never left; its children alone may miss their parent, and only that one."""
    named = receiver.of_job(job_id)
    traces = {s.trace_id for s in named}
    assert len(traces) == 1, f"the job's spans are in {len(traces)} traces"
    spans = receiver.trace(traces.pop())
    got = {s.service for s in spans}
    assert services <= got, f"no spans yet of {services - got}; got {sorted(got)}"
    assert any(s.service == "hodei-logs" and "archive" in s.name for s in spans), \
        "no archive span yet"
    unnamed = [(s.service, s.name) for s in spans if s.attributes.get("hodei.job_id") != job_id]
    assert not unnamed, f"spans without the job id: {unnamed}"
    # Span names are few whatever the job: ids are in attributes, never in a name.
    named_by_id = [s.name for s in spans if UUID_IN.search(s.name)]
    assert not named_by_id, f"span names holding an id: {named_by_id}"
    roots = [(s.service, s.name) for s in spans if not s.parent_id]
    assert roots == [("hodei-cli", root)], f"roots: {roots}"
    ids = {s.span_id for s in spans}
    orphans = [s for s in spans if s.parent_id and s.parent_id not in ids]
    if lost_attempt is None:
        assert not orphans, f"parents missing: {[(s.service, s.name) for s in orphans]}"
    else:
        assert {s.attributes.get("hodei.attempt") for s in orphans} <= {lost_attempt}, orphans
        assert len({s.parent_id for s in orphans}) <= 1, orphans
    return spans


def assert_no_secret(receiver: OtlpReceiver) -> None:
    for s in list(receiver.spans):
        assert SECRET not in s.name, s
        assert SECRET not in json.dumps(s.attributes), s


async def job_id_of_last_run(platform: Platform) -> str:
    jobs = json.loads((await run_cli(platform.env, "job", "list", "-o", "json", "--limit",
                                     "1")).stdout)
    return str(jobs[0]["id"])


async def test_a_local_job_is_one_trace_from_the_cli_to_its_archive_with_each_service_named(
    traced: Platform, receiver: OtlpReceiver
) -> None:
    result = await run_cli(traced.env, "job", "run", "--command", "echo traced",
                           "--env", f"TOKEN={SECRET}", timeout_s=60)
    assert (result.code, result.stdout) == (0, "traced\n"), result.stderr
    job_id = await job_id_of_last_run(traced)

    spans = await assert_eventually(lambda: one_trace(receiver, job_id, JOB_SERVICES),
                                    within_s=30)
    run = next(s for s in spans if s.service == "hodei-agent" and s.name == "agent run")
    assert run.attributes["process.exit.code"] == 0
    assert run.attributes["hodei.attempt"] == 1
    assert any(s.service == "hodei-agent" and s.name == "agent register" for s in spans)
    assert any(s.service == "hodei-agent" and s.name == "agent log batch" for s in spans)
    assert (await job_of(traced, job_id))["trace_id"] == spans[0].trace_id
    get = await run_cli(traced.env, "job", "get", job_id)
    assert f"trace: {spans[0].trace_id}" in " ".join(get.stdout.split()), get.stdout
    assert_no_secret(receiver)


async def test_a_requeued_jobs_second_attempt_is_in_the_same_trace(
    traced: Platform, receiver: OtlpReceiver
) -> None:
    queued = await run_cli(traced.env, "job", "queue",
                           "--command", "echo begin; sleep 2; echo done", timeout_s=30)
    assert queued.code == 0, queued.stderr
    job_id = queued.stdout.strip()

    async def running_agent() -> int:
        job = await job_of(traced, job_id)
        agents = agent_processes(traced.nats_url)
        return agents[0] if job["state"] == "RUNNING" and len(agents) == 1 else 0

    os.kill(await assert_eventually(running_agent, within_s=30), signal.SIGKILL)

    async def succeeded() -> bool:
        return (await job_of(traced, job_id))["state"] == "SUCCEEDED"

    await assert_eventually(succeeded, within_s=60)
    assert (await job_of(traced, job_id))["attempt"] == 2
    spans = await assert_eventually(
        lambda: one_trace(receiver, job_id, JOB_SERVICES, root="cli job queue",
                          lost_attempt=1),
        within_s=30)
    # The requeue, by whichever service saw the agent go, is in the trace too.
    lost = [s for s in spans if s.name == "recovery lose worker"]
    assert [s.service for s in lost] in (["hodei-provisioner"], ["hodei-supervisor"]), lost
    assert lost[0].attributes["hodei.attempt"] == 1
    requeued = subjects.job_event(job_id, subjects.JOB_REQUEUED)
    assert any(s.name == "relay job.*.requeued"
               and s.attributes["messaging.destination.name"] == requeued for s in spans)
    runs = [s for s in spans if s.name == "agent run"]
    assert [r.attributes["hodei.attempt"] for r in runs] == [2]  # the first never ended
    assigns = {s.attributes["hodei.attempt"] for s in spans if s.name == "scheduler assign"}
    assert assigns == {1, 2}


@pytest.mark.docker
async def test_a_docker_job_is_one_trace_with_its_containers_agent_in_it(
    traced_docker: Platform, receiver: OtlpReceiver
) -> None:
    result = await run_cli(traced_docker.env, "job", "run", "--provider", "docker",
                           "--command", "echo traced", "--env", f"TOKEN={SECRET}",
                           timeout_s=90)
    assert (result.code, result.stdout) == (0, "traced\n"), result.stderr
    job_id = await job_id_of_last_run(traced_docker)

    spans = await assert_eventually(lambda: one_trace(receiver, job_id, JOB_SERVICES),
                                    within_s=30)
    assert any(s.name == "provisioner create docker" for s in spans)
    run = next(s for s in spans if s.service == "hodei-agent" and s.name == "agent run")
    assert run.attributes["process.exit.code"] == 0
    assert_no_secret(receiver)
