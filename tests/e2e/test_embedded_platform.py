"""`hodei dev up`: the whole platform from one command, persisted under HODEI_HOME."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import uuid
from pathlib import Path

import asyncpg
import pytest

from hodei_common.testing import assert_eventually
from tests.cli.conftest import HODEI, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` still alive (nats-server, postgres, the agent template)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def kinds_of(pids: list[int]) -> list[str]:
    """What each of ``pids`` is, sorted: ``nats-server``, ``postgres``, ``agent template``."""
    kinds = []
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        kinds.append(next((kind for key, kind in ((b"nats-server", "nats-server"),
                                                   (b"postgres", "postgres"),
                                                   (b"hodei_agent.template", "agent template"))
                           if key in cmdline), cmdline.decode(errors="replace")))
    return sorted(kinds)


async def start_platform(env: dict[str, str], home: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        HODEI, "dev", "up", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
    )

    def up() -> bool:
        assert proc.returncode is None, "dev up exited early"
        return (home / "dev.json").exists()

    await assert_eventually(up, within_s=60.0)
    return proc


async def test_dev_up_runs_the_platform_and_keeps_jobs_across_a_restart(
    scratch_dir: Path,
) -> None:
    home = scratch_dir / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env["HODEI_HOME"] = str(home)

    proc = await start_platform(env, home)
    try:
        endpoints = json.loads((home / "dev.json").read_text())
        assert endpoints["nats_url"].startswith("nats://127.0.0.1:")
        assert endpoints["database_url"].startswith("postgresql://")
        servers = children_of(proc.pid)
        assert kinds_of(servers) == ["agent template", "nats-server", "postgres"]

        status = await run_cli(env, "dev", "status")
        assert status.code == 0, status.stdout + status.stderr
        queued = await run_cli(env, "job", "queue", "--name", "kept", "--command", "echo kept")
        assert queued.code == 0, queued.stderr
        job_id = uuid.UUID(queued.stdout.strip())

        second = await run_cli(env, "dev", "up")
        assert second.code != 0
        assert second.stderr.strip().splitlines() == [second.stderr.strip()]
        assert "already running" in second.stderr

        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
    finally:  # a failed check leaves no platform running
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, (await proc.stdout.read()).decode() if proc.stdout else ""
    assert not (home / "dev.json").exists()
    for pid in servers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text(), f"child {pid} left running"

    gone = await run_cli(env, "job", "list")
    assert gone.code != 0
    assert "hodei dev up" in gone.stderr

    proc = await start_platform(env, home)
    try:
        shown = await run_cli(env, "job", "get", str(job_id), "-o", "json")
        assert shown.code == 0, shown.stderr
        assert json.loads(shown.stdout)["name"] == "kept"
        down = await run_cli(env, "dev", "down")
        assert down.code == 0, down.stderr
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_dev_up_hides_the_database_password_and_says_local_jobs_are_trusted(
    scratch_dir: Path,
) -> None:
    home = scratch_dir / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HODEI_", "PG"))}
    env["HODEI_HOME"] = str(home)

    proc = await start_platform(env, home)
    try:
        dev_file = home / "dev.json"
        assert stat.S_IMODE(dev_file.stat().st_mode) == 0o600
        url = json.loads(dev_file.read_text())["database_url"]
        password = (home / "postgres" / "password").read_text().strip()
        assert stat.S_IMODE((home / "postgres" / "password").stat().st_mode) == 0o600
        assert f":{password}@" in url
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(host="127.0.0.1", port=port, user="hodei", database="hodei",
                                  password="")
        conn = await asyncpg.connect(url)
        await conn.close()

        down = await run_cli(env, "dev", "down")
        assert down.code == 0, down.stderr
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stdout is not None
    output = (await proc.stdout.read()).decode()
    announced = [line for line in output.splitlines() if line.strip().startswith("PostgreSQL")]
    assert announced == [f"  PostgreSQL  postgresql://hodei:***@127.0.0.1:{port}/hodei"], output
    assert password not in output
    trust = [line for line in output.splitlines() if "local jobs run as" in line]
    assert len(trust) == 1  # said once: the local provider is for trusted code only
    assert "run only trusted code on the local provider" in trust[0]
