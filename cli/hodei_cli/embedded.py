"""The embedded platform behind ``hodei dev up``: NATS, PostgreSQL and every service, one process.

NATS and PostgreSQL keep their data under ``$HODEI_HOME`` so a restart keeps every job. A lock
file makes a second ``dev up`` on the same home fail at once; ``dev.json`` tells every other
``hodei`` command where the platform listens, and exists only while it is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pwd
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from uuid import UUID

import asyncpg
import msgspec
from nats.aio.client import Client as NATS

from hodei_cli.services import SERVICES
from hodei_common import database, platform_settings, probes
from hodei_common.embedded import NatsServer, PostgresServer
from hodei_common.errors import HodeiError
from hodei_common.natsauth import Trust
from hodei_common.natsauth.permissions import CLI_IDENTITY
from hodei_common.runner import HodeiService, run_until_signalled, share_metrics
from hodei_common.settings import Settings
from hodei_common.urls import redact_url
from hodei_migrations import migrate

log = logging.getLogger(__name__)

DATABASE = "hodei"
LOCK_FILE = "dev.lock"
AUTH_DIR = "auth"
# One address for every service of the process: a free local port unless HODEI_METRICS_ADDR.
DEFAULT_METRICS_ADDR = "127.0.0.1:0"


class AlreadyRunning(HodeiError):
    """Another ``hodei dev up`` holds this home."""


@dataclass(frozen=True)
class Endpoints:
    nats_url: str
    database_url: str
    creds_dir: Path  # every identity's NATS credentials, <identity>.creds
    metrics_url: str | None = None  # the whole process's /metrics (probes beside it)


@dataclass(frozen=True)
class Auth:
    """The platform's NATS trust and its users' credentials, under ``$HODEI_HOME/auth``:
    made on the first start (files 0600), the same keys on every later one."""

    trust: Trust
    keys_dir: Path
    creds_dir: Path

    @classmethod
    def prepare(cls, root: Path) -> Auth:
        """The trust in ``root`` (``$HODEI_HOME/auth``, or a deployment's directory), made
        there first if there is none, with every creds file written anew."""
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.chmod(0o700)
        keys_dir, creds_dir = root / "keys", root / "creds"
        trust = Trust.load_or_create(keys_dir)
        trust.write_creds(creds_dir)
        trust.write_revoker_creds(keys_dir)
        return cls(trust, keys_dir, creds_dir)

    def provisioner_settings(self) -> dict[str, Path]:
        """What the provisioner is given beside the services' creds: the signing key it
        mints agents' users with, and the operator key and system user it revokes those of
        ended workers with."""
        return {"nats_signing_key": self.trust.signing_key_file(self.keys_dir),
                "nats_operator_key": self.trust.operator_key_file(self.keys_dir),
                "nats_system_creds": self.trust.revoker_creds_file(self.keys_dir)}


def adopt_unsecured_streams(store_dir: Path, account: str) -> None:
    """A home first run without NATS credentials kept its streams in the global account's
    directory: move them to the platform's account, which they belong to now."""
    jetstream = store_dir / "jetstream" / "jetstream"
    legacy, own = jetstream / "$G", jetstream / account
    if legacy.is_dir() and not own.exists():
        legacy.rename(own)
        log.info("moved the JetStream data of the unsecured platform to its account")


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[IO[str]]:
    """Hold ``$HODEI_HOME/dev.lock`` for the platform's lifetime (released if we crash)."""
    home.mkdir(parents=True, exist_ok=True)
    handle = (home / LOCK_FILE).open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise AlreadyRunning(
                f"a Hodei platform is already running on {home} (pid {holder}); "
                f"stop it with `hodei dev down` or use another HODEI_HOME"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield handle
    finally:
        handle.close()


async def _ensure_database(server: PostgresServer, settings: Settings) -> None:
    admin = await asyncpg.connect(server.url())
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await admin.close()
    conn = await database.connect(settings, dsn=server.url(DATABASE))
    try:
        for applied in await migrate(conn):
            log.info("applied migration %s", applied.label)
        # As `hodei migrate` does: the platform settings this environment sets become the
        # platform's (and stay when a later start does not set them).
        for change in await platform_settings.record(conn, settings):
            log.info("platform setting %s", platform_settings.describe(change))
    finally:
        await conn.close()


def write_dev_file(settings: Settings, endpoints: Endpoints) -> None:
    """Write dev.json atomically so a reader never sees half a file, readable by its owner
    only: the database URL in it carries PostgreSQL's password."""
    path = settings.dev_file()
    tmp = path.with_suffix(".tmp")
    text = json.dumps({
        "nats_url": endpoints.nats_url,
        "database_url": endpoints.database_url,
        "creds_dir": str(endpoints.creds_dir),
        "metrics_url": endpoints.metrics_url,
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(),
    }, indent=2) + "\n"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        os.fchmod(f.fileno(), 0o600)  # a leftover tmp file may have had another mode
        f.write(text)
    tmp.replace(path)


ENABLE_DOCKER = """
UPDATE provider_configs SET enabled = true, image = coalesce($1, image)
WHERE name = 'docker'
"""



# Local workers are processes of this user: a job's code can do whatever the platform can.
LOCAL_TRUST_NOTE = ("Note: local jobs run as {user}, with the platform's own access: run "
                    "only trusted code on the local provider (docker and kubernetes jobs run "
                    "as uid 10001 in containers).")


def _user_name() -> str:
    uid = os.getuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"

async def _enable_docker(server: PostgresServer, image: str | None) -> None:
    conn = await asyncpg.connect(server.url(DATABASE))
    try:
        await conn.execute(ENABLE_DOCKER, image)
    finally:
        await conn.close()


async def serve(
    settings: Settings, announce: IO[str] = sys.stdout, *, docker: bool = False,
    worker_image: str | None = None,
) -> None:
    """Start servers and services, announce readiness, run until signalled, then stop all.

    ``docker`` enables the Docker provider (with ``worker_image`` when given) before the
    services start.
    """
    home = settings.home
    # In sessions of their own: Ctrl-C signals the terminal's whole process group, and the
    # servers must outlive the services' drain (stopped below, last). They still die with us
    # should we be killed outright.
    postgres = PostgresServer(home / "postgres", durable=True, die_with_parent=True)
    with home_lock(home):
        auth = Auth.prepare(home / AUTH_DIR)
        adopt_unsecured_streams(home / "nats", auth.trust.account.public_key)
        nats = NatsServer(home / "nats", die_with_parent=True, auth=auth.trust)
        try:
            nats.start()
            postgres.start()
            await _ensure_database(postgres, settings)
            if docker:
                await _enable_docker(postgres, worker_image)
            endpoints = Endpoints(nats.url, postgres.url(DATABASE), auth.creds_dir)
            base = settings.model_copy(update={
                "nats_url": endpoints.nats_url, "database_url": endpoints.database_url,
                "creds": None, "creds_dir": endpoints.creds_dir,
            })
            services = [build(base, **(auth.provisioner_settings()
                                       if name == "provisioner" else {}))
                        for name, build in SERVICES.items()]
            metrics = share_metrics(services)
            async with probes.serving(settings.metrics_addr or DEFAULT_METRICS_ADDR,
                                      services, metrics) as probe_url:
                endpoints = replace(endpoints, metrics_url=f"{probe_url}/metrics")
                await _run(services, settings, endpoints, announce)
        finally:
            settings.dev_file().unlink(missing_ok=True)
            nats.stop()
            postgres.stop()


async def _run(
    services: list[HodeiService], settings: Settings, endpoints: Endpoints, announce: IO[str]
) -> None:
    running = asyncio.create_task(run_until_signalled(
        *services,
        before_stop=lambda: _wind_down(services, endpoints, settings),
    ))
    ready = asyncio.ensure_future(_all_ready(services))
    await asyncio.wait([running, ready], return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        ready.cancel()
        await running  # a service failed to start: re-raise its error
        return
    write_dev_file(settings, endpoints)
    print(f"Hodei is up ({', '.join(s.name for s in services)})", file=announce)
    print(f"  NATS        {redact_url(endpoints.nats_url)}", file=announce)
    print(f"  PostgreSQL  {redact_url(endpoints.database_url)}", file=announce)
    print(f"  metrics     {endpoints.metrics_url} (/healthz, /readyz beside it)",
          file=announce)
    print(f"  home        {settings.home}", file=announce)
    print(f"  NATS users  {endpoints.creds_dir} (hodei commands with this home act as its admin; "
          f"`hodei auth create-user` adds users)", file=announce)
    print(LOCAL_TRUST_NOTE.format(user=_user_name()), file=announce)
    print("Press Ctrl-C to stop.", file=announce, flush=True)
    await running


async def _wind_down(
    services: list[HodeiService], endpoints: Endpoints, settings: Settings
) -> None:
    for service in services:
        service.wind_down()
    await retire_workers(endpoints, settings, settings.drain_grace_s)


async def _all_ready(services: list[HodeiService]) -> None:
    for service in services:
        await service.ready.wait()


def read_dev_file(settings: Settings) -> dict[str, object] | None:
    try:
        data = json.loads(settings.dev_file().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# Live workers, and the assignment a busy one has not been seen to take (no report yet).
LIVE_WORKERS = """
SELECT w.id, w.provider, w.state, w.for_job_id, j.id AS untaken_job, j.attempt
FROM workers w
LEFT JOIN jobs j ON j.worker_id = w.id AND j.state = 'ASSIGNED' AND j.accepted_at IS NULL
WHERE w.state IN ('CREATING', 'READY', 'BUSY', 'TERMINATING')
"""


async def _end_worker(pool: asyncpg.Pool, nc: NATS, row: asyncpg.Record) -> None:
    """Retire an idle worker through the provisioner, or tell a busy one to stop. A job its
    agent has not been seen to take is cancelled with its worker retired: a STOP may reach
    the agent before the assignment does, and the job would run again at the next start."""
    from hodei_common.contracts import subjects
    from hodei_common.contracts.agent import Control, ControlAction
    from hodei_common.lifecycle import jobs, workers

    reason = "the platform is stopping"
    worker = workers.WorkerRef(row["id"], row["provider"], row["untaken_job"] or row["for_job_id"])
    async with pool.acquire() as conn:
        if row["state"] != "BUSY":
            await workers.retire(conn, worker, workers.Retirement.WIND_DOWN, reason, actor="dev")
            return
        if row["untaken_job"] is not None and await jobs.abandon(
                conn, row["untaken_job"], row["attempt"], worker,
                f"cancelled: {reason} before its worker took it", actor="dev"):
            return
    order = Control(action=ControlAction.STOP, reason=reason)
    await nc.publish(subjects.worker_control(row["id"]), msgspec.json.encode(order))


async def retire_workers(endpoints: Endpoints, settings: Settings, within_s: float) -> None:
    """Before the platform stops, end every worker it runs, through the normal path: idle
    ones are retired (the provisioner destroys them), busy ones are told to stop (their
    agent cancels the job, reports it, and exits). Nothing is left running behind it."""
    from hodei_common import messaging

    base = settings.model_copy(update={"nats_url": endpoints.nats_url,
                                       "database_url": endpoints.database_url,
                                       "creds": None, "creds_dir": endpoints.creds_dir})
    pool = await database.create_pool(base, initial_attempts=1)
    nc = await messaging.connect(base, name="hodei-dev-shutdown", identity=CLI_IDENTITY,
                                 initial_attempts=1)
    handled: set[tuple[UUID, str]] = set()
    deadline = asyncio.get_running_loop().time() + within_s
    try:
        while True:
            rows = await pool.fetch(LIVE_WORKERS)
            if not rows:
                return
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("%d workers were still running when the platform stopped", len(rows))
                return
            # A worker requested just before the wind-down shows up late, and a reusable one
            # told to stop may turn READY before its agent exits: end those too.
            for row in rows:
                if (row["id"], row["state"]) in handled or row["state"] == "TERMINATING":
                    continue
                handled.add((row["id"], row["state"]))
                await _end_worker(pool, nc, row)
            await nc.flush()
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
        await pool.close()
