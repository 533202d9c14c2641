"""The status line of `hodei job run` on the embedded platform: a job held back by its
provider's room says so on the terminal, and the line is gone before its first output."""

from __future__ import annotations

import pytest

from hodei_cli.statusline import ERASE
from hodei_common.testing import assert_eventually
from tests.cli.conftest import on_terminal, run_cli
from tests.e2e.conftest import Platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_a_job_waiting_for_room_says_so_until_its_first_line(platform: Platform) -> None:
    full = await run_cli(platform.env, "provider", "set", "local", "--max-workers", "0")
    assert full.code == 0, full.stderr
    try:
        async with on_terminal(platform.env, "job", "run", "--command",
                               "echo to-stderr >&2; echo to-stdout") as term:
            await assert_eventually(lambda: term.shows(
                "queued: waiting for a free worker: provider 'local' has 0 of 0 workers"),
                within_s=15)
            room = await run_cli(platform.env, "provider", "set", "local", "--max-workers", "8")
            assert room.code == 0, room.stderr
            code, out = await term.finish()
    finally:
        await run_cli(platform.env, "provider", "set", "local", "--max-workers", "8")
    assert (code, out) == (0, b"to-stdout\n")
    assert term.after_last_line() == ERASE + b"to-stderr\n"
