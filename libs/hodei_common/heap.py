"""The objects a long-running process made to start (its modules, classes, settings,
clients) live as long as it does: :func:`settle` takes them out of the cyclic collector's
generations, so that a full collection looks only at what came after.

Without it a full collection of the platform's start-up objects (~150,000) holds its event
loop for ~100 ms, and every job in flight waits; in the agent template, which forks an agent
per worker, the collector would also write to the pages the agents share with it.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect what is garbage now, then freeze the rest (``gc.freeze``). For a process's
    entry point, once it has started: a process that settles again freezes only what is new."""
    gc.collect()
    gc.freeze()
