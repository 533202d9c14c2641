"""Why a job waits, shown to the person at the terminal: the status line of `hodei job run`
and `hodei job logs --follow` (only on a terminal), and the resource in `hodei job explain`.

The platform here is api and relay only, so a job stays QUEUED; the test plays the
provider of its worker."""

from __future__ import annotations

import asyncio
import re
import signal
import termios
import uuid
from uuid import UUID

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from hodei_cli.statusline import ERASE, POLL_INTERVAL_S
from hodei_common.contracts import subjects
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.contracts.workers import WorkerMode
from hodei_common.lifecycle import workers
from hodei_common.runner import HodeiService
from hodei_common.testing import assert_eventually
from tests.cli.conftest import HODEI, on_terminal, run_cli

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def queued_job(pool: asyncpg.Pool) -> UUID:
    """The one job the CLI submitted, once it is there."""
    async def found() -> UUID | None:
        job_id: UUID | None = await pool.fetchval("SELECT id FROM jobs WHERE state = 'QUEUED'")
        return job_id
    job_id = await assert_eventually(found)
    assert job_id is not None
    return job_id


async def pod_pending(pool: asyncpg.Pool, job_id: UUID) -> tuple[UUID, str]:
    """A worker made for the job whose pod is being created, as the Kubernetes provider
    would record it; its id and status."""
    worker_id = uuid.uuid4()
    pod = f"hodei-worker-{worker_id}"
    status = f"pod {pod} Pending: ContainerCreating"
    ref = workers.WorkerRef(worker_id, "local", job_id)
    async with pool.acquire() as conn:
        assert await workers.request(conn, ref, mode=WorkerMode.EPHEMERAL, cpus=None,
                                     memory_bytes=None, actor="test")
        assert await workers.record_resource(conn, ref, pod, actor="test")
        assert await workers.note_status(conn, worker_id, status)
    return worker_id, status


async def explain_requests(nc: NATS) -> list[object]:
    """Every `jobs.explain` request from now on (the list fills as they come)."""
    seen: list[object] = []

    async def heard(msg: object) -> None:
        seen.append(msg)

    await nc.subscribe(subjects.api_ns(DEFAULT_NAMESPACE, subjects.JOBS_EXPLAIN), cb=heard)
    await nc.flush()
    return seen


async def test_job_run_on_a_terminal_says_why_the_job_waits_and_erases_it_when_interrupted(
    platform: list[HodeiService], cli_env: dict[str, str], pool: asyncpg.Pool, nc: NATS,
) -> None:
    asked = await explain_requests(nc)
    async with on_terminal(cli_env, "job", "run", "--command", "echo hi") as term:
        job_id = await queued_job(pool)
        await assert_eventually(
            lambda: term.shows("queued: waiting for the scheduler to request a worker"))
        worker_id, status = await pod_pending(pool, job_id)
        waiting = f"queued: waiting for worker {str(worker_id)[:8]}\u2026 to register (made "
        await assert_eventually(lambda: term.shows(waiting))
        line = next(x for x in reversed(term.drawn()) if waiting in x)
        assert re.fullmatch(rf"{re.escape(waiting)}\d+\.\ds ago; {status}, \d+\.\ds ago\)",
                            line), line

        # A narrower terminal gets a line that fits it.
        termios.tcsetwinsize(term.master, (24, 40))
        await assert_eventually(lambda: term.shows(waiting[:38] + "\u2026"))
        assert len(term.drawn()[-1]) == 39

        term.proc.send_signal(signal.SIGINT)
        code, out = await term.finish()
    assert (code, out) == (130, b"")
    assert term.after_last_line() == ERASE + f"job {job_id} cancelled\n".encode()
    assert asked, "the line comes from the job's explanation"
    assert await pool.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "CANCELLED"


async def test_job_logs_follow_on_a_terminal_says_why_the_job_waits_until_interrupted(
    platform: list[HodeiService], cli_env: dict[str, str], pool: asyncpg.Pool,
) -> None:
    queued = await run_cli(cli_env, "job", "queue", "--command", "true")
    job_id = queued.stdout.strip()
    async with on_terminal(cli_env, "job", "logs", "--follow", job_id) as term:
        await assert_eventually(
            lambda: term.shows("queued: waiting for the scheduler to request a worker"))
        term.proc.send_signal(signal.SIGINT)
        code, out = await term.finish()
    assert (code, out) == (130, b"")
    assert term.after_last_line() == ERASE


async def test_a_command_whose_stderr_is_no_terminal_gets_no_status_line_and_asks_nothing(
    platform: list[HodeiService], cli_env: dict[str, str], pool: asyncpg.Pool, nc: NATS,
) -> None:
    asked = await explain_requests(nc)
    proc = await asyncio.create_subprocess_exec(
        HODEI, "job", "run", "--command", "echo hi", env=cli_env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        job_id = await queued_job(pool)
        await pod_pending(pool, job_id)
        # Nothing to wait for: the line would have been drawn twice by now on a terminal.
        await asyncio.sleep(3 * POLL_INTERVAL_S)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (proc.returncode, out, err) == (130, b"", f"job {job_id} cancelled\n".encode())
    assert asked == []


async def test_explain_names_the_workers_resource_and_its_providers_last_word(
    platform: list[HodeiService], cli_env: dict[str, str], pool: asyncpg.Pool,
) -> None:
    job_id = UUID((await run_cli(cli_env, "job", "queue", "--command", "true")).stdout.strip())
    worker_id, status = await pod_pending(pool, job_id)
    shown = await run_cli(cli_env, "job", "explain", str(job_id))
    assert shown.code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert re.fullmatch(rf"waiting for: worker {worker_id} to register \(made \d+\.\ds ago; "
                        rf"{status}, \d+\.\ds ago\)", lines[1]), lines[1]
    assert lines[2] == f"worker: {worker_id} CREATING, last heartbeat never"
    assert re.fullmatch(rf"resource: hodei-worker-{worker_id}, last status: {status} "
                        r"\(\d+\.\ds ago\)", lines[3]), lines[3]
