"""An ended worker's agent loses NATS: the user it registered is revoked, its connection closed
and refused from then on, whether the worker was lost or terminated; a live worker's agent
keeps its own."""

from __future__ import annotations

import os
import signal
import sys
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
from tests.provisioner.helpers import (
    environ_of,
    register,
    request_worker,
    resource_pid,
    retire_worker,
    worker,
)

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


async def _in(pool: asyncpg.Pool, worker_id: UUID, state: WorkerState) -> bool:
    return (await worker(pool, worker_id))["state"] == state


async def _end(pool: asyncpg.Pool, worker_id: UUID, pid: str, ending: WorkerState) -> None:
    """End the worker as the platform does: lost (its provider reports its agent gone), or
    terminated once its work is done (the scheduler retires it)."""
    if ending is WorkerState.FAILED:
        os.kill(int(pid), signal.SIGKILL)
    else:
        await retire_worker(pool, worker_id)
    await assert_eventually(lambda: _in(pool, worker_id, ending), within_s=WITHIN_S)


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
@pytest.mark.parametrize("ending", [WorkerState.FAILED, WorkerState.TERMINATED])
async def test_an_ended_workers_agent_is_disconnected_and_refused(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS, nats_url: str,
    tmp_path: Path, provisioner_settings: ProvisionerSettings, ending: WorkerState,
) -> None:
    ended_id, live_id = await request_worker(pool), await request_worker(pool)
    ended_creds, ended_pid = await _agent_creds(pool, nc, ended_id, tmp_path)
    live_creds, _ = await _agent_creds(pool, nc, live_id, tmp_path)
    user = jwt.decode(jwt.creds_user_jwt(ended_creds.read_text()))
    # A worker with no job: the configured lifetime.
    assert user["exp"] - user["iat"] == provisioner_settings.provisioner_agent_jwt_lifetime_s
    # The user's connection stays: the test holds it, as a partitioned agent would, or
    # whoever got hold of a terminated agent's credential.
    ended = await _connect(nats_url, ended_creds, ended_id, reconnect=True)
    live = await _connect(nats_url, live_creds, live_id, reconnect=True)
    try:
        await _end(pool, ended_id, ended_pid, ending)
        await assert_eventually(lambda: not ended.is_connected, within_s=WITHIN_S)
        with pytest.raises(NatsError, match="Authorization Violation"):
            await _connect(nats_url, ended_creds, ended_id, reconnect=False)
        await live.publish(subjects.worker_heartbeat(live_id), b"{}")
        await live.flush(timeout=2)
        assert live.is_connected
    finally:
        await ended.close()
        await live.close()


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_a_revocation_lasts_until_the_last_jwt_of_its_key_expired(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS, tmp_path: Path,
) -> None:
    worker_id = await request_worker(pool)
    user_jwt = jwt.decode(jwt.creds_user_jwt(
        (await _agent_creds(pool, nc, worker_id, tmp_path))[0].read_text()))
    await _end(pool, worker_id, str(await resource_pid(pool, worker_id)), WorkerState.FAILED)
    key = (await worker(pool, worker_id))["nats_public_key"]
    async with pool.acquire() as conn:
        # Every JWT issued to its key up to the last one's expiry is refused.
        until = (await store.revoked_agent_keys(conn, CLOCK_SLACK_S))[key]
        assert until == pytest.approx(user_jwt["exp"], abs=1)
        assert until >= user_jwt["iat"]
        await conn.execute("""UPDATE workers SET nats_jwt_expires_at = now() - interval '30 s'
                              WHERE id = $1""", worker_id)
        assert key in await store.revoked_agent_keys(conn, CLOCK_SLACK_S)
        # Every JWT it was given has expired (past the clocks' slack): nothing to revoke.
        await conn.execute("""UPDATE workers SET nats_jwt_expires_at = now() - interval '2 min'
                              WHERE id = $1""", worker_id)
        assert key not in await store.revoked_agent_keys(conn, CLOCK_SLACK_S)
        # A live worker's key is never in the list, whatever its expiry.
        live_id = await request_worker(pool)
        await _agent_creds(pool, nc, live_id, tmp_path)
        live_key = (await worker(pool, live_id))["nats_public_key"]
        assert live_key not in await store.revoked_agent_keys(conn, CLOCK_SLACK_S)
