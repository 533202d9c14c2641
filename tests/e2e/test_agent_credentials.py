"""Agents' short-lived NATS users on the embedded platform: a warm reusable worker's JWT
expires while it waits and while it runs a job, is renewed by the provisioner and taken into
use by its agent, and its jobs end SUCCEEDED with their whole output."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

from hodei_common.testing import assert_eventually
from tests.cli.conftest import run_cli
from tests.e2e.conftest import Platform, start_platform, stop_platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LIFETIME_S = 5  # of an agent's JWT while its worker has no job
LINES = 40


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    root = Path(tempfile.mkdtemp(prefix="hodei-e2e-creds-"))
    root.chmod(0o755)
    running = start_platform(root / "home", {
        "HODEI_PROVISIONER_AGENT_JWT_LIFETIME_S": str(LIFETIME_S),
        "HODEI_PROVISIONER_AGENT_JWT_GRACE_S": "3"})
    try:
        yield running
    finally:
        stop_platform(running)
        shutil.rmtree(root, ignore_errors=True)


async def test_a_warm_workers_jobs_succeed_across_the_expiry_of_its_agents_jwts(
    platform: Platform,
) -> None:
    db = await asyncpg.connect(platform.endpoints["database_url"])
    try:
        await db.execute("UPDATE provider_configs SET worker_mode = 'reusable', min_idle = 1, "
                         "settings = '{\"max_jobs\": 2}' WHERE name = 'local'")

        async def renewed_while_idle() -> UUID:
            # Its JWT from registration has expired: it lives on a renewed one.
            row = await db.fetchrow(
                "SELECT id FROM workers WHERE state = 'READY' AND registered_at < now() - "
                "make_interval(secs => $1) AND nats_jwt_expires_at > now()", LIFETIME_S + 1)
            assert row is not None
            return UUID(str(row["id"]))

        worker_id = await assert_eventually(renewed_while_idle, within_s=60)
        # Assigned under a JWT minted while idle, the job outlives it: its agent renews from
        # half its life on and re-makes its connection before the JWT in use expires.
        result = await run_cli(platform.env, "job", "run", "--command",
                               f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.2; done")
        assert result.code == 0, result.stderr
        assert result.stdout.splitlines() == [f"line {i}" for i in range(1, LINES + 1)]
        ran = await db.fetch("SELECT worker_id, state FROM jobs")
        assert [(r["worker_id"], r["state"]) for r in ran] == [(worker_id, "SUCCEEDED")]
        # Its agent still works: a job goes to it (or to the warm worker made meanwhile) and
        # succeeds.
        again = await run_cli(platform.env, "job", "run", "--command", "echo again")
        assert (again.code, again.stdout) == (0, "again\n"), again.stderr
        log = (platform.home / "workers" / f"{worker_id}.log").read_text()
        # While idle it reconnected at once; while the job ran, only ahead of the expiry.
        assert "reconnecting to NATS with its renewed user (between jobs)" in log
        assert "reconnecting to NATS with its renewed user (before its JWT in use expires)" \
            in log
        assert "Authentication Expired" not in log
    finally:
        await db.execute("UPDATE provider_configs SET worker_mode = 'ephemeral', min_idle = 0, "
                         "settings = '{}' WHERE name = 'local'")
        await db.close()
