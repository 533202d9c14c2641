"""``assert_eventually``: poll a condition instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def assert_eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    within_s: float = 10.0,
    interval_s: float = 0.02,
    message: str = "",
) -> T:
    """Call ``check`` until it returns a truthy value without raising AssertionError.

    Returns that value; on time-out re-raises the last AssertionError, or fails with
    ``message`` and the last value seen.
    """
    deadline = time.monotonic() + within_s
    last_error: AssertionError | None = None
    last_value: object = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last_value = result
        except AssertionError as e:
            last_error = e
        if time.monotonic() >= deadline:
            if last_error is not None:
                raise last_error
            raise AssertionError(message or f"condition not met within {within_s:g}s "
                                 f"(last value: {last_value!r})")
        await asyncio.sleep(interval_s)
