"""Helpers of the provisioner tests: do what the scheduler and agents do, look at results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.micro.request import ERROR_CODE_HEADER

from hodei_common.contracts import subjects
from hodei_common.contracts.api import ErrorReply
from hodei_common.contracts.workers import WorkerMode
from hodei_common.lifecycle import workers
from hodei_common.natsauth import KeyKind, NKey
from hodei_common.testing.processes import running

is_alive = running  # a zombie counts as dead
# What a refused registration must leave as it was. Not outbox_events: the relay running
# beside the test deletes the rows it publishes meanwhile, and every event written to the
# outbox is in domain_events too.
TABLES = ("workers", "worker_bootstrap_tokens", "domain_events")


async def request_worker(
    pool: asyncpg.Pool, provider: str = "local", mode: WorkerMode = WorkerMode.EPHEMERAL
) -> UUID:
    """Insert a CREATING worker with its ProvisionRequested event and its provisioning saga,
    as the scheduler does."""
    worker_id = uuid4()
    async with pool.acquire() as conn:
        assert await workers.request(conn, workers.WorkerRef(worker_id, provider), mode=mode,
                                     cpus=None, memory_bytes=None, actor="test")
    return worker_id


async def retire_worker(pool: asyncpg.Pool, worker_id: UUID, reason: str = "job finished") -> None:
    """Move a READY worker to TERMINATING with WorkerTerminating, as the scheduler does."""
    async with pool.acquire() as conn:
        provider = await conn.fetchval("SELECT provider FROM workers WHERE id = $1", worker_id)
        assert await workers.retire(conn, workers.WorkerRef(worker_id, provider),
                                    workers.Retirement.IDLE, reason, actor="test")


async def worker(pool: asyncpg.Pool, worker_id: UUID) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM workers WHERE id = $1", worker_id)
    assert row is not None
    return row


async def resource_pid(pool: asyncpg.Pool, worker_id: UUID) -> int:
    """The worker's recorded pid, once there is one (0 before)."""
    row = await worker(pool, worker_id)
    return int(row["provider_resource_id"] or 0)


async def row_counts(pool: asyncpg.Pool) -> dict[str, int]:
    return {t: await pool.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


async def stream_events(js: JetStreamContext) -> list[tuple[str, dict[str, Any]]]:
    """Every message of WORKER_EVENTS, in order: (subject, payload)."""
    info = await js.stream_info(subjects.WORKER_EVENTS_STREAM)
    events = []
    for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
        msg = await js.get_msg(subjects.WORKER_EVENTS_STREAM, seq)
        events.append((msg.subject, json.loads(msg.data or b"{}")))
    return events


async def worker_subjects(js: JetStreamContext, worker_id: UUID) -> list[str]:
    """The subjects of the worker's events on JetStream, in order."""
    return [s for s, p in await stream_events(js) if p.get("worker_id") == str(worker_id)]


async def published(js: JetStreamContext, worker_id: UUID, subject: str) -> bool:
    """Whether an event of the worker on ``subject`` is on JetStream."""
    return subject in await worker_subjects(js, worker_id)


async def register(
    nc: NATS, worker_id: UUID | str, token: str, **fields: Any
) -> tuple[bool, dict[str, Any]]:
    """Send a registration, with a new agent key unless ``fields`` name one: (ok, decoded
    reply or error reply)."""
    body = {"worker_id": str(worker_id), "token": token,
            "public_key": NKey.create(KeyKind.USER).public_key, **fields}
    return await register_raw(nc, json.dumps(body).encode())


async def register_raw(nc: NATS, data: bytes) -> tuple[bool, dict[str, Any]]:
    msg = await nc.request(subjects.WORKER_REGISTER, data, timeout=5)
    if ERROR_CODE_HEADER in (msg.headers or {}):
        error = msgspec.json.decode(msg.data, type=ErrorReply)
        assert msg.headers is not None
        return False, {"code": str(error.code), "message": error.message,
                       "status": msg.headers[ERROR_CODE_HEADER]}
    return True, json.loads(msg.data)


def environ_of(pid: int) -> dict[str, str]:
    """A live process's environment, from /proc."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def log_text(workers_dir: Path, worker_id: UUID) -> str:
    path = workers_dir / f"{worker_id}.log"
    return path.read_text() if path.exists() else ""
