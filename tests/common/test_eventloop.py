"""Processes run on uvloop unless asked for asyncio's own loop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from hodei_common import eventloop


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_run_uses_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HODEI_EVENT_LOOP", raising=False)
    assert issubclass(eventloop.run(_loop_type()), uvloop.Loop)


def test_hodei_event_loop_asyncio_runs_asyncio_s_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HODEI_EVENT_LOOP", "asyncio")
    loop_type = eventloop.run(_loop_type())
    assert not issubclass(loop_type, uvloop.Loop)
    assert issubclass(loop_type, asyncio.BaseEventLoop)
