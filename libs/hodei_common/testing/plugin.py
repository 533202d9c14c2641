"""Pytest plugin: a real nats-server and a real PostgreSQL, started on free ports.

One PostgreSQL cluster per session with a migrated template database; each test gets a fresh
database cloned from it, and its own nats-server with JetStream, so tests share nothing.
The Docker engine and the Kubernetes stand-in (``kube_standin``) come from their own modules.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_common import database, messaging
from hodei_common.embedded import NatsServer, PostgresServer
from hodei_common.natsauth import Trust, permissions
from hodei_common.settings import Settings
from hodei_common.testing.docker import docker_engine
from hodei_common.testing.kube import kube_standin
from hodei_common.testing.processes import TEST_IDENTITY

__all__ = ["docker_engine", "kube_standin"]

TEMPLATE_DB = "hodei_template"

_db_counter = itertools.count(1)


def _scratch_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # PostgreSQL runs unprivileged when the tests run as root
    return path


async def _create_template(server: PostgresServer) -> None:
    from hodei_migrations import migrate

    admin = await asyncpg.connect(server.url())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(server.url(TEMPLATE_DB))
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the session, with a migrated template database."""
    root = _scratch_dir("hodei-pg-")
    server = PostgresServer(root / "postgres", durable=False, max_connections=300)
    server.start()
    try:
        asyncio.run(_create_template(server))
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def database_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh database for this test, cloned from the migrated template."""
    name = f"test_{os.getpid()}_{next(_db_counter)}"
    admin = await asyncpg.connect(postgres_server.url())
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await admin.close()
    yield postgres_server.url(name)
    admin = await asyncpg.connect(postgres_server.url())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
def empty_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A database with no schema at all, for migration tests."""
    name = f"empty_{os.getpid()}_{next(_db_counter)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_server.url())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    yield postgres_server.url(name)
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A temporary directory PostgreSQL can use even when the tests run as root."""
    path = _scratch_dir("hodei-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _own_nats_server(prefix: str, auth: Trust | None = None) -> Iterator[NatsServer]:
    root = _scratch_dir(prefix)
    server = NatsServer(root, auth=auth)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def nats_trust() -> Trust:
    """New operator, account and system keys for this test."""
    return Trust.create()


@pytest.fixture
def nats_server(nats_trust: Trust) -> Iterator[NatsServer]:
    """A nats-server with JetStream of this test's own, secured as the platform runs it
    (operator mode): only users minted by ``nats_trust`` get in, each with its own
    permissions, so a service missing a permission fails its tests."""
    yield from _own_nats_server("hodei-nats-", nats_trust)


@pytest.fixture
def secured_nats_server(nats_server: NatsServer) -> NatsServer:
    """The same server, named for tests about its security."""
    return nats_server


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def nats_creds_dir(nats_trust: Trust, tmp_path: Path) -> Path:
    """Every service's and the CLI's creds file, and the test's own (``hodei-test``, which may
    do anything: a test observes and plays parts, it is not the platform)."""
    directory = tmp_path / "creds"
    nats_trust.write_creds(directory)
    nats_trust.user(permissions.everything(TEST_IDENTITY)).write(
        directory / f"{TEST_IDENTITY}.creds")
    return directory


@pytest.fixture
def nats_signing_key(nats_trust: Trust, tmp_path: Path) -> Path:
    """The account signing key's seed file, as the provisioner is given it."""
    nats_trust.save(tmp_path / "nats-keys")
    return nats_trust.signing_key_file(tmp_path / "nats-keys")


@pytest.fixture
def nats_operator_key(nats_trust: Trust, tmp_path: Path) -> Path:
    """The operator's seed file, as the provisioner is given it to revoke users."""
    nats_trust.save(tmp_path / "nats-keys")
    return nats_trust.operator_key_file(tmp_path / "nats-keys")


@pytest.fixture
def nats_system_creds(nats_trust: Trust, tmp_path: Path) -> Path:
    """The revoker's creds file (a system-account user), as the provisioner is given it."""
    return nats_trust.write_revoker_creds(tmp_path / "nats-keys")


@pytest.fixture
def settings(nats_url: str, database_url: str, nats_creds_dir: Path, tmp_path: Path
             ) -> Settings:
    """Settings pointing at this test's NATS (each identity with its own credentials) and
    database, with short drain times."""
    return Settings(
        nats_url=nats_url,
        database_url=database_url,
        creds_dir=nats_creds_dir,
        home=tmp_path / "hodei-home",
        drain_grace_s=5.0,
        request_timeout_s=5.0,
    )


def platform_env(settings: Settings) -> dict[str, str]:
    """The environment a service process started by a test needs to reach its NATS (as its
    own user) and database."""
    env = {"HODEI_NATS_URL": settings.resolved_nats_url(),
           "HODEI_DATABASE_URL": settings.resolved_database_url()}
    if settings.creds_dir is not None:
        env["HODEI_CREDS_DIR"] = str(settings.creds_dir)
    return env


def as_test_user(settings: Settings) -> Settings:
    """``settings`` connecting as the test's own user (a service only a test runs has no
    role of its own)."""
    assert settings.creds_dir is not None
    return settings.model_copy(update={"creds": settings.creds_dir / f"{TEST_IDENTITY}.creds"})


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await database.create_pool(settings, initial_attempts=1)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    client = await messaging.connect(settings, name=TEST_IDENTITY, initial_attempts=3)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def js(nc: NATS) -> JetStreamContext:
    context = nc.jetstream()
    await messaging.ensure_streams(context)
    return context
