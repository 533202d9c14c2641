"""The embedded platform for benchmarks: `hodei dev up` in a throwaway HODEI_HOME."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from hodei_cli.embedded import AUTH_DIR
from hodei_common.natsauth import Trust, permissions
from hodei_common.settings import Settings

HODEI = str(Path(sys.executable).with_name("hodei"))


@asynccontextmanager
async def embedded_platform(extra_env: dict[str, str] | None = None) -> AsyncIterator[Settings]:
    """Start the platform (``extra_env`` added to its environment), yield settings pointing
    at it, stop it (SIGTERM) and clean up."""
    home = Path(tempfile.mkdtemp(prefix="hodei-bench-"))
    home.chmod(0o755)  # PostgreSQL runs unprivileged when the benchmark runs as root
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env["HODEI_HOME"] = str(home)
    env.update(extra_env or {})
    platform = await asyncio.create_subprocess_exec(
        HODEI, "dev", "up", env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        while not (home / "dev.json").exists():
            if platform.returncode is not None:
                raise SystemExit("hodei dev up failed")
            await asyncio.sleep(0.05)
        dev = json.loads((home / "dev.json").read_text())
        # A benchmark looks into streams no part of the platform may read at will: it acts
        # as an observer minted from the platform's keys.
        creds = home / "bench.creds"
        trust = Trust.load(home / AUTH_DIR / "keys")
        trust.user(permissions.everything("hodei-bench")).write(creds)
        yield Settings(nats_url=dev["nats_url"], database_url=dev["database_url"], home=home,
                       creds=creds)
    finally:
        platform.send_signal(signal.SIGTERM)
        await platform.wait()
        shutil.rmtree(home, ignore_errors=True)
