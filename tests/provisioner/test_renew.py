"""An agent's NATS user expires within minutes and is renewed while its worker lives: no JWT
outlives the lifetime, a one-job worker's ends at its job's deadline plus a grace when that
comes first, and only a live worker's own agent gets one."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.micro.request import ERROR_CODE_HEADER

from hodei_common.contracts import subjects
from hodei_common.contracts.api import ErrorCode, ErrorReply
from hodei_common.contracts.workers import WorkerMode, WorkerState
from hodei_common.lifecycle import workers
from hodei_common.natsauth import KeyKind, NKey, jwt, permissions
from hodei_common.testing import assert_eventually
from hodei_provisioner.config import ProvisionerSettings
from hodei_provisioner.handlers import agent_jwt_expiry
from hodei_provisioner.service import ProvisionerService
from tests.provisioner.conftest import FAKE_AGENT
from tests.provisioner.helpers import environ_of, register, request_worker, resource_pid, worker

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

NO_REGISTER = [sys.executable, str(FAKE_AGENT), "--no-register"]
LIFETIME_S = 120.0
GRACE_S = 45.0
SLACK_S = 3.0  # between the test's clock reading and the provisioner's


@pytest.fixture
def provisioner_settings(provisioner_settings: ProvisionerSettings) -> ProvisionerSettings:
    return provisioner_settings.model_copy(update={
        "provisioner_agent_jwt_lifetime_s": LIFETIME_S,
        "provisioner_agent_jwt_grace_s": GRACE_S})


async def _job(pool: asyncpg.Pool, timeout_s: float, *, running_for_s: float | None = None,
               worker_id: UUID | None = None) -> UUID:
    """A QUEUED job, or one RUNNING on ``worker_id`` for ``running_for_s`` (the worker then
    BUSY with it)."""
    job_id = uuid4()
    if running_for_s is None:
        await pool.execute("INSERT INTO jobs (id, command, timeout_s, provider) "
                           "VALUES ($1, 'true', $2, 'local')", job_id, timeout_s)
        return job_id
    await pool.execute(
        "INSERT INTO jobs (id, command, timeout_s, provider, state, worker_id, assigned_at, "
        "started_at) VALUES ($1, 'true', $2, 'local', 'RUNNING', $3, now(), "
        "now() - make_interval(secs => $4))", job_id, timeout_s, worker_id, running_for_s)
    await pool.execute("UPDATE workers SET state = 'BUSY', current_job_id = $2 WHERE id = $1",
                       worker_id, job_id)
    return job_id


async def _worker_for(pool: asyncpg.Pool, job_id: UUID) -> UUID:
    """An ephemeral worker requested for one job, as the scheduler asks for it."""
    worker_id = uuid4()
    async with pool.acquire() as conn:
        assert await workers.request(conn, workers.WorkerRef(worker_id, "local", job_id),
                                     mode=WorkerMode.EPHEMERAL, cpus=None, memory_bytes=None,
                                     actor="test")
    return worker_id


async def _register(pool: asyncpg.Pool, nc: NATS, worker_id: UUID) -> tuple[NKey, str]:
    """Register as the worker's agent with a key made here: the key and its JWT."""
    pid = await assert_eventually(lambda: resource_pid(pool, worker_id))
    key = NKey.create(KeyKind.USER)
    ok, reply = await register(nc, worker_id, environ_of(pid)["HODEI_BOOTSTRAP_TOKEN"],
                               public_key=key.public_key)
    assert ok, reply
    return key, str(reply["user_jwt"])


async def _connect_as_agent(nats_url: str, key: NKey, user_jwt: str, worker_id: UUID,
                            tmp_path: Path, errors: list[Exception]) -> NATS:
    creds = jwt.write_creds(tmp_path / f"{uuid4()}.creds", user_jwt, key.seed)

    async def on_error(e: Exception) -> None:
        errors.append(e)

    agent = NATS()
    await agent.connect(nats_url, user_credentials=str(creds), connect_timeout=2,
                        inbox_prefix=subjects.inbox_prefix(subjects.agent_identity(worker_id)),
                        allow_reconnect=False, error_cb=on_error)
    return agent


async def _renew(nc: NATS, worker_id: UUID) -> tuple[bool, Any]:
    """Ask for the worker's renewal: (True, the JWT's claims) or (False, the ErrorReply)."""
    msg = await nc.request(subjects.worker_renew(worker_id), b"{}", timeout=5)
    if ERROR_CODE_HEADER in (msg.headers or {}):
        return False, msgspec.json.decode(msg.data, type=ErrorReply)
    return True, jwt.decode(msgspec.json.decode(msg.data)["user_jwt"])


async def _stored_expiry(pool: asyncpg.Pool, worker_id: UUID) -> float:
    expires: datetime = (await worker(pool, worker_id))["nats_jwt_expires_at"]
    return expires.timestamp()


def test_an_agents_jwt_lives_its_lifetime_or_until_its_jobs_deadline_plus_a_grace() -> None:
    def expiry(mode: WorkerMode, left_s: float | None) -> float:
        return agent_jwt_expiry(mode, left_s, lifetime_s=3600, grace_s=30)

    assert expiry(WorkerMode.EPHEMERAL, 100) == 130
    assert expiry(WorkerMode.EPHEMERAL, -5) == 30  # past its deadline: the grace still
    assert expiry(WorkerMode.EPHEMERAL, None) == 3600  # its job gone: it may take another
    assert expiry(WorkerMode.EPHEMERAL, 7200) == 3600  # a long job: renewed while it runs
    assert expiry(WorkerMode.REUSABLE, 100) == 3600  # it outlives its job
    assert expiry(WorkerMode.REUSABLE, 7200) == 3600
    assert expiry(WorkerMode.REUSABLE, None) == 3600


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_a_one_job_workers_jwt_expires_at_its_jobs_deadline_plus_a_grace(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS,
) -> None:
    job_id = await _job(pool, timeout_s=LIFETIME_S / 4)
    worker_id = await _worker_for(pool, job_id)
    _, user_jwt = await _register(pool, nc, worker_id)
    user = jwt.decode(user_jwt)
    # Not started yet: its deadline is its timeout from now.
    assert user["exp"] - user["iat"] == pytest.approx(LIFETIME_S / 4 + GRACE_S, abs=SLACK_S)
    assert await _stored_expiry(pool, worker_id) == pytest.approx(user["exp"], abs=1)

    # A job longer than the lifetime: the lifetime, renewed while it runs.
    long_id = await _worker_for(pool, await _job(pool, timeout_s=3 * LIFETIME_S))
    _, long_jwt = await _register(pool, nc, long_id)
    long = jwt.decode(long_jwt)
    assert long["exp"] - long["iat"] == pytest.approx(LIFETIME_S, abs=SLACK_S)

    # A pool worker (no job) gets the configured lifetime.
    idle_id = await request_worker(pool, mode=WorkerMode.REUSABLE)
    _, idle_jwt = await _register(pool, nc, idle_id)
    idle = jwt.decode(idle_jwt)
    assert idle["exp"] - idle["iat"] == pytest.approx(LIFETIME_S, abs=SLACK_S)


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_a_live_workers_agent_renews_its_jwt_for_its_lifetime_whatever_job_it_holds(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS, nats_url: str,
    tmp_path: Path,
) -> None:
    worker_id = await request_worker(pool, mode=WorkerMode.REUSABLE)
    key, user_jwt = await _register(pool, nc, worker_id)
    first = jwt.decode(user_jwt)
    errors: list[Exception] = []
    agent = await _connect_as_agent(nats_url, key, user_jwt, worker_id, tmp_path, errors)
    try:
        ok, idle = await _renew(agent, worker_id)  # as itself: its permissions allow it
        assert ok, idle
        assert idle["sub"] == key.public_key
        assert idle["nats"]["pub"]["allow"] == list(permissions.agent(worker_id).publish)
        assert idle["exp"] - idle["iat"] == pytest.approx(LIFETIME_S, abs=SLACK_S)
        assert idle["exp"] >= first["exp"]

        # Busy with a long job: no longer than its lifetime, renewed again while it runs.
        await _job(pool, timeout_s=10 * LIFETIME_S, running_for_s=100, worker_id=worker_id)
        ok, busy = await _renew(agent, worker_id)
        assert ok, busy
        assert busy["exp"] - busy["iat"] == pytest.approx(LIFETIME_S, abs=SLACK_S)
        assert await _stored_expiry(pool, worker_id) == pytest.approx(busy["exp"], abs=1)
        assert not errors
    finally:
        await agent.close()


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
@pytest.mark.parametrize("state", [WorkerState.FAILED, WorkerState.TERMINATED,
                                   WorkerState.TERMINATING])
async def test_a_renewal_is_refused_once_the_worker_is_not_live(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS, state: WorkerState,
) -> None:
    worker_id = await request_worker(pool)
    await _register(pool, nc, worker_id)
    stored = await _stored_expiry(pool, worker_id)
    await pool.execute("UPDATE workers SET state = $2 WHERE id = $1", worker_id, state.value)
    ok, error = await _renew(nc, worker_id)
    assert not ok
    assert error.code == ErrorCode.PERMISSION_DENIED
    assert error.message == (f"worker {worker_id} is {state}: its agent's NATS user is not "
                             "renewed")
    assert await _stored_expiry(pool, worker_id) == stored
    ok, error = await _renew(nc, uuid4())
    assert not ok
    assert error.code == ErrorCode.PERMISSION_DENIED
    assert "does not exist" in error.message


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_an_agent_may_not_renew_another_workers_user(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS, nats_url: str,
    tmp_path: Path,
) -> None:
    mine, theirs = await request_worker(pool), await request_worker(pool)
    key, user_jwt = await _register(pool, nc, mine)
    await _register(pool, nc, theirs)
    errors: list[Exception] = []
    agent = await _connect_as_agent(nats_url, key, user_jwt, mine, tmp_path, errors)
    try:
        with pytest.raises((NatsError, TimeoutError)):
            await agent.request(subjects.worker_renew(theirs), b"{}", timeout=1)
        await assert_eventually(lambda: any(
            "permissions violation" in str(e) and str(theirs) in str(e) for e in errors))
        ok, _ = await _renew(agent, mine)
        assert ok
    finally:
        await agent.close()
