"""The embedded platform (`hodei dev up`) as a user runs it, shared by a module's tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hodei_cli.embedded import AUTH_DIR
from hodei_common.natsauth import Trust, permissions
from hodei_common.settings import Settings
from hodei_common.testing.processes import TEST_IDENTITY, agent_processes
from tests.cli.conftest import HODEI, run_cli

__all__ = ["agent_processes"]

# On a failed test, the platform's log lines kept in its report: its warnings and errors, then
# its last lines (the platform's home, and its log with it, goes with the test's scratch dir).
LOG_TAIL_LINES = 60
LOG_NOTABLE_LINES = 120


@dataclass(frozen=True)
class Platform:
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]

    @property
    def endpoints(self) -> dict[str, str]:
        return dict(json.loads((self.home / "dev.json").read_text()))

    @property
    def nats_url(self) -> str:
        return self.endpoints["nats_url"]

    def endpoints_only(self) -> dict[str, Any]:
        """Where the running platform's NATS and PostgreSQL are, and its NATS credentials."""
        info = self.endpoints
        return {"nats_url": info["nats_url"], "database_url": info["database_url"],
                "creds_dir": Path(info["creds_dir"])}

    def test_settings(self) -> Settings:
        """Settings connecting as a test's own user, minted from the platform's keys: a test
        does what an operator does (purge a stream), which no part of the platform may."""
        creds = self.home / "test.creds"
        if not creds.exists():
            trust = Trust.load(self.home / AUTH_DIR / "keys")
            trust.user(permissions.everything(TEST_IDENTITY)).write(creds)
        return Settings(nats_url=self.nats_url, creds=creds)


def platform_log_excerpt(platform: Platform) -> str:
    """What a failed test's report shows of the platform's log (empty when it has none)."""
    try:
        lines = (platform.home.parent / "dev-up.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    notable = [line for line in lines if " WARNING " in line or " ERROR " in line
               or "Traceback" in line]
    return "\n".join([
        f"-- warnings and errors (last {LOG_NOTABLE_LINES}) --", *notable[-LOG_NOTABLE_LINES:],
        f"-- last {LOG_TAIL_LINES} lines --", *lines[-LOG_TAIL_LINES:]])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                               ) -> Generator[None, Any, None]:
    outcome: Any = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Platform) and (excerpt := platform_log_excerpt(value)):
            report.sections.append((f"platform log of {value.home}", excerpt))


async def cli_json(platform: Platform, *args: str) -> Any:
    """The CLI's JSON output of ``args`` against the platform (which must succeed)."""
    result = await run_cli(platform.env, *args, "-o", "json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


async def job_of(platform: Platform, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = await cli_json(platform, "job", "get", job_id)
    return job


def start_platform(home: Path, extra_env: dict[str, str] | None = None) -> Platform:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env["HODEI_HOME"] = str(home)
    env.update(extra_env or {})
    with (home.parent / "dev-up.log").open("ab") as log:
        proc = subprocess.Popen([HODEI, "dev", "up"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (home / "dev.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"hodei dev up failed:\n{(home.parent / 'dev-up.log').read_text()}")
        time.sleep(0.05)
    return Platform(home, env, proc)


def stop_platform(platform: Platform) -> int:
    platform.proc.send_signal(signal.SIGTERM)
    return platform.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    root = Path(tempfile.mkdtemp(prefix="hodei-e2e-"))
    root.chmod(0o755)
    running = start_platform(root / "home")
    try:
        yield running
    finally:
        stop_platform(running)
        shutil.rmtree(root, ignore_errors=True)
