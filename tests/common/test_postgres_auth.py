"""The embedded PostgreSQL asks for its superuser's password, which only its owner can read."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import asyncpg
import pytest

from hodei_common.embedded import PostgresServer
from hodei_common.embedded.postgres import SUPERUSER, postgres_bindir
from hodei_common.embedded.postgres_auth import password_path, write_password
from hodei_common.urls import redact_url

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def _no_ambient_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No password from the environment or a ~/.pgpass may stand in for the missing one."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))


async def assert_refused(server: PostgresServer, *, user: str = SUPERUSER,
                         password: str | None = None) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host="127.0.0.1", port=server.port, user=user,
                              password=password, database="postgres")


async def assert_connects(server: PostgresServer) -> asyncpg.Connection:
    conn = await asyncpg.connect(server.url())
    assert await conn.fetchval("SELECT current_user") == SUPERUSER
    return conn


async def test_a_connection_without_the_password_is_refused(
    postgres_server: PostgresServer,
) -> None:
    await assert_refused(postgres_server)
    await assert_refused(postgres_server, password="wrong")
    await assert_refused(postgres_server, password=postgres_server.password + "x")
    await assert_refused(postgres_server, user="postgres")


async def test_the_url_carries_the_password(postgres_server: PostgresServer) -> None:
    conn = await assert_connects(postgres_server)
    await conn.close()


def test_the_password_file_is_its_owners_alone(postgres_server: PostgresServer) -> None:
    st = password_path(postgres_server.root).stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert not list(postgres_server.root.glob(".*password*")), "initdb's copy was left behind"


def test_the_password_is_neither_on_the_command_line_nor_in_the_log(
    postgres_server: PostgresServer,
) -> None:
    assert postgres_server.pid is not None
    password = postgres_server.password
    assert password not in Path(f"/proc/{postgres_server.pid}/cmdline").read_text()
    assert password not in postgres_server.log_file.read_text(errors="replace")


async def test_a_password_that_needs_quoting_works_through_the_url(scratch_dir: Path) -> None:
    root = scratch_dir / "postgres"
    server = PostgresServer(root, durable=False)
    server.root.mkdir(parents=True)
    awkward = "p@ss:w/rd%20?#'\"é"
    write_password(server.root, awkward)
    server.start()
    try:
        assert awkward not in server.url()
        conn = await assert_connects(server)
        await conn.close()
        await assert_refused(server)
    finally:
        server.stop()


def _initdb_with_trust(server: PostgresServer) -> None:
    """Make the cluster as the embedded server did before passwords: trust auth, no file."""
    server.root.mkdir(parents=True)
    if server.user is not None:
        os.chown(server.root, server.user.pw_uid, server.user.pw_gid)
    as_user = ({} if server.user is None else
               {"user": server.user.pw_uid, "group": server.user.pw_gid, "extra_groups": []})
    subprocess.run([str(postgres_bindir() / "initdb"), "-D", str(server.data_dir),
                    "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                   check=True, capture_output=True, **as_user)
    subprocess.run([str(postgres_bindir() / "postgres"), "--single", "-D", str(server.data_dir),
                    "-c", "exit_on_error=on", "postgres"],
                   input=b"CREATE TABLE kept (note text)\nINSERT INTO kept VALUES ('old')\n",
                   check=True, capture_output=True, **as_user)


async def test_a_trust_cluster_from_before_is_upgraded_and_then_refuses_no_password(
    scratch_dir: Path,
) -> None:
    server = PostgresServer(scratch_dir / "postgres", durable=False)
    _initdb_with_trust(server)
    assert not password_path(server.root).exists()

    server.start()
    try:
        await assert_refused(server)
        conn = await assert_connects(server)
        assert await conn.fetchval("SELECT note FROM kept") == "old"
        await conn.close()
        st = password_path(server.root).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
        hba = (server.data_dir / "pg_hba.conf").read_text().splitlines()
        rules = [line.split() for line in hba if line.strip() and not line.startswith("#")]
        assert rules
        assert all(rule[-1] == "scram-sha-256" for rule in rules), rules
    finally:
        server.stop()

    # Upgraded once: the next start keeps the password it made.
    password = server.password
    again = PostgresServer(scratch_dir / "postgres", durable=False, port=server.port)
    again.start()
    try:
        assert again.password == password
        await assert_refused(again)
        conn = await assert_connects(again)
        await conn.close()
    finally:
        again.stop()


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://hodei:s3cret@127.0.0.1:5432/hodei", "postgresql://hodei:***@127.0.0.1:5432/hodei"),
    ("postgresql://hodei:a%40b@db/hodei?sslmode=require",
     "postgresql://hodei:***@db/hodei?sslmode=require"),
    ("postgresql://hodei@127.0.0.1:5432/hodei", "postgresql://hodei@127.0.0.1:5432/hodei"),
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ("postgresql://u:p@w@host/db", "postgresql://u:***@host/db"),
])
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
