"""A lost worker's agent loses NATS: the user it registered is revoked, its connection closed
and refused from then on; a live worker's agent keeps its own."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from hodei_common.contracts import subjects
from hodei_common.contracts.workers import WorkerState
from hodei_common.natsauth import KeyKind, NKey, jwt
from hodei_common.testing import assert_eventually
from hodei_provisioner import store
from hodei_provisioner.config import ProvisionerSettings
from hodei_provisioner.revocations import CLOCK_SLACK_S
from hodei_provisioner.service import ProvisionerService
from tests.provisioner.conftest import FAKE_AGENT
from tests.provisioner.helpers import environ_of, register, request_worker, resource_pid, worker

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

NO_REGISTER = [sys.executable, str(FAKE_AGENT), "--no-register"]
WITHIN_S = 10.0


async def _agent_creds(pool: asyncpg.Pool, nc: NATS, worker_id: UUID, directory: Path
                       ) -> tuple[Path, str]:
    """Register as the worker's agent with a key made here: its creds file, and its pid."""
    pid = await assert_eventually(lambda: resource_pid(pool, worker_id))
    key = NKey.create(KeyKind.USER)
    ok, reply = await register(nc, worker_id, environ_of(pid)["HODEI_BOOTSTRAP_TOKEN"],
                               public_key=key.public_key)
    assert ok, reply
    creds = jwt.write_creds(directory / f"{worker_id}.creds", reply["user_jwt"], key.seed)
    return creds, str(pid)


async def _connect(url: str, creds: Path, worker_id: UUID, *, reconnect: bool) -> NATS:
    agent = NATS()
    try:
        await agent.connect(url, user_credentials=str(creds), connect_timeout=2,
                            inbox_prefix=subjects.inbox_prefix(subjects.agent_identity(worker_id)),
                            allow_reconnect=reconnect, max_reconnect_attempts=-1 if reconnect
                            else 0, reconnect_time_wait=0.2)  # type: ignore[arg-type]
    except BaseException:
        await agent.close()
        raise
    return agent


async def _failed(pool: asyncpg.Pool, worker_id: UUID) -> bool:
    return (await worker(pool, worker_id))["state"] == WorkerState.FAILED


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_a_lost_workers_agent_is_disconnected_and_refused(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS, nats_url: str,
    tmp_path: Path, provisioner_settings: ProvisionerSettings,
) -> None:
    lost_id, live_id = await request_worker(pool), await request_worker(pool)
    lost_creds, lost_pid = await _agent_creds(pool, nc, lost_id, tmp_path)
    live_creds, _ = await _agent_creds(pool, nc, live_id, tmp_path)
    user = jwt.decode(jwt.creds_user_jwt(lost_creds.read_text()))
    # A worker with no job: the configured lifetime.
    assert user["exp"] - user["iat"] == provisioner_settings.provisioner_agent_jwt_lifetime_s
    # The agent's process keeps its user; the test holds it, as a partitioned agent would.
    lost = await _connect(nats_url, lost_creds, lost_id, reconnect=True)
    live = await _connect(nats_url, live_creds, live_id, reconnect=True)
    try:
        os.kill(int(lost_pid), signal.SIGKILL)  # its provider reports it gone: it is lost
        await assert_eventually(lambda: _failed(pool, lost_id), within_s=WITHIN_S)
        await assert_eventually(lambda: not lost.is_connected, within_s=WITHIN_S)
        with pytest.raises(NatsError, match="Authorization Violation"):
            await _connect(nats_url, lost_creds, lost_id, reconnect=False)
        await live.publish(subjects.worker_heartbeat(live_id), b"{}")
        await live.flush(timeout=2)
        assert live.is_connected
    finally:
        await lost.close()
        await live.close()


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_a_revocation_lasts_until_the_last_jwt_of_its_key_expired(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS, tmp_path: Path,
) -> None:
    worker_id = await request_worker(pool)
    _, pid = await _agent_creds(pool, nc, worker_id, tmp_path)
    os.kill(int(pid), signal.SIGKILL)
    await assert_eventually(lambda: _failed(pool, worker_id), within_s=WITHIN_S)
    key = (await worker(pool, worker_id))["nats_public_key"]
    async with pool.acquire() as conn:
        lost_at = (await store.lost_agent_keys(conn, CLOCK_SLACK_S))[key]
        assert abs(lost_at - time.time()) < WITHIN_S
        # However long ago the loss, a JWT of its key may still be valid: it stays revoked.
        await conn.execute("""UPDATE sagas SET created_at = now() - interval '31 days'
                              WHERE aggregate_id = $1 AND saga_type = 'recovery'""",
                           worker_id)
        assert key in await store.lost_agent_keys(conn, CLOCK_SLACK_S)
        await conn.execute("""UPDATE workers SET nats_jwt_expires_at = now() - interval '30 s'
                              WHERE id = $1""", worker_id)
        assert key in await store.lost_agent_keys(conn, CLOCK_SLACK_S)
        # Every JWT it was given has expired (past the clocks' slack): nothing to revoke.
        await conn.execute("""UPDATE workers SET nats_jwt_expires_at = now() - interval '2 min'
                              WHERE id = $1""", worker_id)
        assert key not in await store.lost_agent_keys(conn, CLOCK_SLACK_S)
