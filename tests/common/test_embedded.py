"""The embedded servers' processes: out of their parent's process group, and tied to it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from hodei_common.embedded import NatsServer
from hodei_common.testing import assert_eventually
from hodei_common.testing.processes import running

pytestmark = pytest.mark.nats


def test_a_server_runs_in_a_session_of_its_own(nats_server: NatsServer) -> None:
    # A Ctrl-C (SIGINT to the terminal's process group) must not reach it.
    assert nats_server.pid is not None
    assert os.getsid(nats_server.pid) == nats_server.pid
    assert os.getpgid(nats_server.pid) != os.getpgid(0)


async def test_a_server_tied_to_its_parent_stops_when_the_parent_is_killed_9(
    scratch_dir: Path,
) -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from hodei_common.embedded import NatsServer
            server = NatsServer(Path({str(scratch_dir)!r}), die_with_parent=True)
            server.start()
            print(server.pid, flush=True)
            time.sleep(60)
        """), stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    assert parent.stdout is not None
    try:
        pid = int(await asyncio.wait_for(parent.stdout.readline(), 30))
        assert running(pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        await parent.wait()
    await assert_eventually(lambda: not running(pid), within_s=10,
                            message="nats-server outlived its parent")
