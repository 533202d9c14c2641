"""Registration: a good token makes the worker READY once; anything else is refused and
changes nothing."""

from __future__ import annotations

import json
import sys
from uuid import UUID, uuid4

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_common.contracts import subjects
from hodei_common.contracts.workers import WorkerState
from hodei_common.natsauth import KeyKind, NKey, Trust, jwt, permissions
from hodei_common.testing import assert_eventually
from hodei_provisioner import store, tokens
from hodei_provisioner.config import ProvisionerSettings
from hodei_provisioner.service import ProvisionerService
from tests.provisioner.conftest import FAKE_AGENT
from tests.provisioner.helpers import (
    environ_of,
    log_text,
    register,
    register_raw,
    request_worker,
    resource_pid,
    row_counts,
    worker,
    worker_subjects,
)

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

NO_REGISTER = [sys.executable, str(FAKE_AGENT), "--no-register"]


def _reply_of(log: str) -> dict[str, object]:
    line = next(line for line in log.splitlines() if line.startswith("reply "))
    return json.loads(line.removeprefix("reply "))  # type: ignore[no-any-return]


def _sent_key(log: str) -> str:
    line = next(line for line in log.splitlines() if line.startswith("key "))
    return line.removeprefix("key ")


async def _ready(pool: asyncpg.Pool, worker_id: UUID) -> bool:
    return (await worker(pool, worker_id))["state"] == WorkerState.READY


async def test_the_agents_registration_makes_the_worker_ready(
    provisioner: ProvisionerService, pool: asyncpg.Pool, js: JetStreamContext,
    provisioner_settings: ProvisionerSettings, nats_trust: Trust,
) -> None:
    await pool.execute("""UPDATE provider_configs SET settings = '{"max_jobs": 3}'
                          WHERE name = 'local'""")
    worker_id = await request_worker(pool)
    await assert_eventually(lambda: _ready(pool, worker_id))
    row = await worker(pool, worker_id)
    assert row["hostname"] == "fake-host"
    assert row["registered_at"] is not None
    assert row["idle_since"] is not None
    used = await pool.fetchval(
        "SELECT used_at FROM worker_bootstrap_tokens WHERE worker_id = $1", worker_id)
    assert used is not None

    async def announced() -> list[str]:
        seen = await worker_subjects(js, worker_id)
        assert subjects.WORKER_READY in seen
        return seen

    seen = await assert_eventually(announced)
    assert seen.index(subjects.WORKER_REGISTERED) == seen.index(subjects.WORKER_READY) - 1
    assert set(seen) == {subjects.PROVISION_REQUESTED, subjects.WORKER_CREATED,
                         subjects.WORKER_REGISTERED, subjects.WORKER_READY}
    reply = await assert_eventually(
        lambda: _reply_of(log_text(provisioner_settings.workers_dir(), worker_id)))
    assert reply["headers"] == {}
    data = json.loads(str(reply["data"]))
    user = jwt.decode(data.pop("user_jwt"))
    assert data == {
        "worker_id": str(worker_id), "mode": "ephemeral", "heartbeat_interval_s": 1.0,
        "max_jobs": 3, "idle_ttl_s": None,
    }
    # Its NATS user: bound to the key it sent, signed by the account's signing key, allowed
    # its own worker's subjects only.
    agent = permissions.agent(worker_id)
    sent = _sent_key(log_text(provisioner_settings.workers_dir(), worker_id))
    assert user["sub"] == sent
    assert (await worker(pool, worker_id))["nats_public_key"] == sent
    assert user["iss"] == nats_trust.signing.public_key
    assert user["nats"]["issuer_account"] == nats_trust.account.public_key
    assert user["nats"]["pub"] == {"allow": list(agent.publish)}
    assert user["nats"]["sub"] == {"allow": list(agent.subscribe)}


async def test_a_spent_token_is_refused(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS,
) -> None:
    worker_id = await request_worker(pool)
    await assert_eventually(lambda: _ready(pool, worker_id))
    token = environ_of(await resource_pid(pool, worker_id))["HODEI_BOOTSTRAP_TOKEN"]
    before = await row_counts(pool)
    ok, reply = await register(nc, worker_id, token)
    assert not ok
    assert reply == {"code": "permission_denied", "status": "403",
                     "message": "bootstrap token was already used"}
    assert await row_counts(pool) == before


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_refused_registrations_say_why_and_change_nothing(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS,
) -> None:
    first, second = await request_worker(pool), await request_worker(pool)
    pids = [await assert_eventually(lambda w=w: resource_pid(pool, w)) for w in (first, second)]
    token = environ_of(pids[0])["HODEI_BOOTSTRAP_TOKEN"]
    await pool.execute("""UPDATE worker_bootstrap_tokens SET expires_at = now() - interval '1s'
                          WHERE worker_id = $1""", second)
    expired = environ_of(pids[1])["HODEI_BOOTSTRAP_TOKEN"]
    before = await row_counts(pool)
    cases = [
        (first, "not-a-token", "unknown bootstrap token"),
        (first, "", "unknown bootstrap token"),
        (second, token, "bootstrap token belongs to another worker"),
        (uuid4(), token, "bootstrap token belongs to another worker"),
        (second, expired, "bootstrap token expired"),
    ]
    for worker_id, presented, reason in cases:
        ok, reply = await register(nc, worker_id, presented, hostname="h")
        assert not ok
        assert reply == {"code": "permission_denied", "status": "403", "message": reason}
        assert presented == "" or presented not in reply["message"]
    assert await row_counts(pool) == before
    for worker_id in (first, second):
        assert (await worker(pool, worker_id))["state"] == WorkerState.CREATING
    assert await pool.fetchval(
        "SELECT count(*) FROM worker_bootstrap_tokens WHERE used_at IS NOT NULL") == 0
    # The refusals spent nothing: the right token still works.
    ok, reply = await register(nc, first, token)
    assert ok, reply
    assert reply["worker_id"] == str(first)


async def test_a_worker_that_is_no_longer_creating_is_refused(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS,
) -> None:
    worker_id = uuid4()
    await pool.execute("INSERT INTO workers (id, provider, state) VALUES ($1, 'local', 'FAILED')",
                       worker_id)
    async with pool.acquire() as conn:
        await store.issue_token(conn, worker_id, tokens.digest("good-token"), 60)
    before = await row_counts(pool)
    ok, reply = await register(nc, worker_id, "good-token")
    assert (ok, reply["code"]) == (False, "permission_denied")
    assert reply["message"] == f"worker {worker_id} is FAILED; it cannot register"
    assert await row_counts(pool) == before
    assert await pool.fetchval(
        "SELECT used_at FROM worker_bootstrap_tokens WHERE worker_id = $1", worker_id) is None


@pytest.mark.parametrize(("body", "wanted"), [
    (b"garbage", "malformed request: JSON is malformed"),
    (b'{"token": "x"}', "Object missing required field `worker_id`"),
    (b'{"worker_id": "nope", "token": "x"}', "Invalid UUID"),
    (json.dumps({"worker_id": str(UUID(int=1)), "token": "x"}).encode(),
     "public_key must be the agent's own nkey user public key"),
    (json.dumps({"worker_id": str(UUID(int=1)), "token": "x",
                 "public_key": NKey.create(KeyKind.ACCOUNT).public_key}).encode(),
     "public_key must be the agent's own nkey user public key"),
    (json.dumps({"worker_id": str(UUID(int=1)), "token": "x", "hostname": "h" * 300,
                 "public_key": NKey.create(KeyKind.USER).public_key}).encode(),
     "hostname is longer than 255 characters"),
])
async def test_a_malformed_registration_is_an_invalid_argument(
    provisioner: ProvisionerService, nc: NATS, body: bytes, wanted: str,
) -> None:
    ok, reply = await register_raw(nc, body)
    assert (ok, reply["code"], reply["status"]) == (False, "invalid_argument", "400")
    assert wanted in reply["message"]
