"""Running a process's event loop: uvloop when it is installed, else asyncio's own.

uvloop runs the same coroutines with less CPU per socket event and per callback; every
service, the agent and the CLI's long-running commands start through :func:`run`. (The agent
starts its jobs with ``subprocess`` itself, not the loop's ``subprocess_exec``: uvloop's
forks the whole agent, where ``subprocess`` uses vfork.)
``HODEI_EVENT_LOOP=asyncio`` chooses asyncio's loop (to compare, or to debug with asyncio's
debug mode).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None (asyncio's default) when asked for or not installed."""
    if os.environ.get("HODEI_EVENT_LOOP", "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """:func:`asyncio.run` on the loop :func:`loop_factory` chooses."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
