"""Provision requests: a process per worker, its pid recorded once, failures fail the worker."""

from __future__ import annotations

import hashlib
import sys
import time
from uuid import UUID, uuid4

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_common import tracing
from hodei_common.contracts import subjects
from hodei_common.contracts.workers import ProvisionRequested, WorkerMode, WorkerState
from hodei_common.lifecycle import workers
from hodei_common.natsauth import jwt
from hodei_common.testing import assert_eventually
from hodei_provisioner import store, tokens
from hodei_provisioner.config import ProvisionerSettings
from hodei_provisioner.service import ProvisionerService
from tests.provisioner.conftest import FAKE_AGENT, local_provider
from tests.provisioner.helpers import (
    environ_of,
    is_alive,
    published,
    register,
    request_worker,
    resource_pid,
    stream_events,
    worker,
    worker_subjects,
)

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

# Besides these, where its spans go and the trace of the job it is made for.
AGENT_ENV = {"PATH", "HOME", "LANG", "HODEI_LOG_LEVEL", "HODEI_LOG_FORMAT", "HODEI_NATS_URL",
             "HODEI_WORKER_ID", "HODEI_BOOTSTRAP_TOKEN", "HODEI_BOOTSTRAP_CREDS",
             tracing.ENV_TRACEPARENT, tracing.ENV_BAGGAGE, *tracing.AGENT_ENV}
NO_REGISTER = [sys.executable, str(FAKE_AGENT), "--no-register"]


async def _status_is(pool: asyncpg.Pool, worker_id: UUID, expected: str) -> bool:
    return bool((await worker(pool, worker_id))["resource_status"] == expected)


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_provision_request_spawns_an_agent_and_records_its_pid(
    provisioner: ProvisionerService, pool: asyncpg.Pool, js: JetStreamContext,
    provisioner_settings: ProvisionerSettings,
) -> None:
    worker_id = await request_worker(pool)
    pid = await assert_eventually(lambda: resource_pid(pool, worker_id))
    assert local_provider(provisioner).children() == {pid: worker_id}
    assert is_alive(pid)
    await assert_eventually(
        lambda: published(js, worker_id, subjects.WORKER_CREATED))
    created = [p for s, p in await stream_events(js) if s == subjects.WORKER_CREATED]
    assert created[0]["provider_resource_id"] == str(pid)
    assert (await worker(pool, worker_id))["state"] == WorkerState.CREATING
    # What `hodei job explain` shows of the resource while the job waits.
    await assert_eventually(lambda: _status_is(pool, worker_id, f"process {pid} started"))
    env = environ_of(pid)
    assert set(env) <= AGENT_ENV, "the agent gets a minimal environment"
    assert env["HODEI_WORKER_ID"] == str(worker_id)
    assert env["HODEI_NATS_URL"] == provisioner_settings.resolved_nats_url()
    assert provisioner_settings.workers_dir().joinpath(f"{worker_id}.log").exists()
    # Its NATS credentials allow the register request alone, and expire with its token.
    claims = jwt.decode(jwt.creds_user_jwt(env["HODEI_BOOTSTRAP_CREDS"]))
    assert claims["name"] == subjects.agent_identity(worker_id)
    assert claims["nats"]["pub"] == {"allow": [subjects.WORKER_REGISTER]}
    assert claims["nats"]["sub"] == {
        "allow": [subjects.inbox_prefix(subjects.agent_identity(worker_id)) + ".>"]}
    assert 0 < claims["exp"] - time.time() <= provisioner_settings.provisioner_token_ttl_s


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_the_bootstrap_token_is_stored_only_as_its_sha256(
    provisioner: ProvisionerService, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture,
) -> None:
    worker_id = await request_worker(pool)
    pid = await assert_eventually(lambda: resource_pid(pool, worker_id))
    token = environ_of(pid)["HODEI_BOOTSTRAP_TOKEN"]
    assert len(token) >= 43  # 32 random bytes
    rows = await pool.fetch("SELECT * FROM worker_bootstrap_tokens WHERE worker_id = $1",
                            worker_id)
    assert len(rows) == 1
    assert bytes(rows[0]["token_hash"]) == hashlib.sha256(token.encode()).digest()
    assert rows[0]["used_at"] is None
    everything = " ".join([
        *(str(dict(r)) for r in rows),
        *(str(dict(r)) for r in await pool.fetch("SELECT * FROM domain_events")),
        *(bytes(r["payload"]).decode() for r in await pool.fetch(
            "SELECT payload FROM outbox_events")),
        caplog.text,
    ])
    assert token not in everything


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_a_redelivered_provision_request_does_not_spawn_a_second_agent(
    provisioner: ProvisionerService, pool: asyncpg.Pool, js: JetStreamContext,
) -> None:
    worker_id = await request_worker(pool)
    pid = await assert_eventually(lambda: resource_pid(pool, worker_id))
    first = next(p for s, p in await stream_events(js) if s == subjects.PROVISION_REQUESTED)
    # The same event again, after the duplicate window (so with a new message id).
    ack = await js.publish(subjects.PROVISION_REQUESTED,
                           msgspec.json.encode(msgspec.convert(first, ProvisionRequested)),
                           headers={subjects.HEADER_MSG_ID: "redelivered"})

    async def handled() -> bool:
        info = await js.consumer_info(subjects.WORKER_EVENTS_STREAM,
                                      subjects.PROVISIONER_REQUESTS_CONSUMER)
        return info.ack_floor.stream_seq >= ack.seq

    await assert_eventually(handled)
    assert local_provider(provisioner).children() == {pid: worker_id}
    assert await resource_pid(pool, worker_id) == pid
    assert await pool.fetchval(
        "SELECT count(*) FROM worker_bootstrap_tokens WHERE worker_id = $1", worker_id) == 1
    assert (await worker_subjects(js, worker_id)).count(subjects.WORKER_CREATED) == 1


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_a_request_waits_while_an_earlier_attempt_holds_a_live_token(
    provisioner: ProvisionerService, pool: asyncpg.Pool, nc: NATS,
) -> None:
    worker_id = uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await workers.request(conn, workers.WorkerRef(worker_id, "local"),
                              mode=WorkerMode.EPHEMERAL, cpus=None, memory_bytes=None,
                              actor="test")
        # An attempt that died after issuing its token, its agent maybe still starting.
        await store.issue_token(conn, worker_id, tokens.digest("earlier-attempt"), 1.0)
    await assert_eventually(lambda: resource_pid(pool, worker_id))
    earlier, new = await pool.fetch("""SELECT * FROM worker_bootstrap_tokens
                                       WHERE worker_id = $1 ORDER BY created_at""", worker_id)
    assert new["created_at"] >= earlier["expires_at"], "created only once the lease ran out"
    assert list(local_provider(provisioner).children().values()) == [worker_id]
    ok, reply = await register(nc, worker_id, "earlier-attempt")
    assert (ok, reply["message"]) == (False, "bootstrap token expired")


async def test_a_provider_kind_without_an_implementation_fails_the_worker(
    provisioner: ProvisionerService, pool: asyncpg.Pool, js: JetStreamContext,
) -> None:
    provisioner.providers.pop("kubernetes")  # as a build without it
    worker_id = await request_worker(pool, provider="kubernetes")
    await assert_eventually(
        lambda: published(js, worker_id, subjects.PROVISION_FAILED))
    row = await worker(pool, worker_id)
    assert row["state"] == WorkerState.FAILED
    message = "provider kind 'kubernetes' is not available in this build"
    assert row["error"] == message
    failed = [p for s, p in await stream_events(js) if s == subjects.PROVISION_FAILED]
    assert failed[0]["error"] == message
    assert row["provider_resource_id"] is None
    assert local_provider(provisioner).children() == {}
    assert await pool.fetchval("SELECT count(*) FROM worker_bootstrap_tokens") == 0


async def test_a_disabled_provider_fails_the_worker(
    provisioner: ProvisionerService, pool: asyncpg.Pool, js: JetStreamContext,
) -> None:
    await pool.execute("UPDATE provider_configs SET enabled = false WHERE name = 'local'")
    worker_id = await request_worker(pool)
    await assert_eventually(
        lambda: published(js, worker_id, subjects.PROVISION_FAILED))
    row = await worker(pool, worker_id)
    assert (row["state"], row["error"]) == (WorkerState.FAILED, "provider 'local' is disabled")
    assert local_provider(provisioner).children() == {}


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"max_jobs": "three"}, "provider 'local' has invalid settings: max_jobs must be a "
                                'whole number of jobs, at least 1 (got "three")'),
        ({"idle_ttl_s": -1, "cpus": 1}, "provider 'local' has invalid settings: idle_ttl_s "
                                        "must be a number of seconds above 0, at most 365 "
                                        "days (got -1)"),
    ],
)
async def test_a_provider_whose_stored_settings_are_invalid_fails_the_worker(
    provisioner: ProvisionerService, pool: asyncpg.Pool, js: JetStreamContext,
    document: dict[str, object], error: str,
) -> None:
    # Written past the API, which refuses such a document.
    await pool.execute("UPDATE provider_configs SET settings = $1 WHERE name = 'local'",
                       document)
    worker_id = await request_worker(pool)
    await assert_eventually(
        lambda: published(js, worker_id, subjects.PROVISION_FAILED))
    row = await worker(pool, worker_id)
    assert (row["state"], row["error"]) == (WorkerState.FAILED, error)
    assert local_provider(provisioner).children() == {}
    assert await pool.fetchval("SELECT count(*) FROM worker_bootstrap_tokens") == 0


@pytest.mark.parametrize("agent_command", [NO_REGISTER])
async def test_a_stored_setting_another_kind_has_does_not_keep_a_worker_from_starting(
    provisioner: ProvisionerService, pool: asyncpg.Pool,
) -> None:
    # What an older API let an operator store: Docker's network mode on a local provider.
    await pool.execute("""UPDATE provider_configs SET settings = '{"network_mode": "host"}'
                          WHERE name = 'local'""")
    worker_id = await request_worker(pool)
    await assert_eventually(lambda: resource_pid(pool, worker_id))
    assert (await worker(pool, worker_id))["state"] == WorkerState.CREATING


@pytest.mark.parametrize("agent_command", [["/nonexistent/hodei-agent"]])
async def test_an_agent_that_cannot_start_fails_the_worker(
    provisioner: ProvisionerService, pool: asyncpg.Pool, js: JetStreamContext,
) -> None:
    worker_id = await request_worker(pool)
    await assert_eventually(
        lambda: published(js, worker_id, subjects.PROVISION_FAILED))
    row = await worker(pool, worker_id)
    assert row["state"] == WorkerState.FAILED
    assert row["error"].startswith("the local provider could not create the worker: "
                                   "cannot start the agent (/nonexistent/hodei-agent)")
    assert "\n" not in row["error"]
