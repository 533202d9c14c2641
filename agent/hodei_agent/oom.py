"""Telling a job killed for memory from one killed otherwise.

In a container with a memory limit, the kernel's OOM killer ends a process of the job (or
the job's shell) with SIGKILL; the job then exits 137 or dies of signal 9, which looks like
any other kill. The container's memory cgroup counts those kills (``oom_kill``), so a count
that rose while the job ran says why it failed. Job processes are also made the OOM killer's
first choice, so that the agent, which reports the failure, is the last to go.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

OOM_KILLED = "OOMKilled"
# cgroup v2, then v1: the files of the cgroup this process is in, as a container sees them.
COUNTERS = (
    Path("/sys/fs/cgroup/memory.events"),
    Path("/sys/fs/cgroup/memory/memory.oom_control"),
)
FIRST_VICTIM = "1000"  # the highest oom_score_adj


def oom_kills() -> int | None:
    """How many processes the OOM killer has ended in this cgroup; None when unknown."""
    for path in COUNTERS:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


def oom_killed_since(before: int | None) -> bool:
    """Whether the OOM killer ended a process since ``before`` was read."""
    after = oom_kills()
    return before is not None and after is not None and after > before


def make_first_victim(pid: int) -> None:
    """Best effort: raising a process's own oom_score_adj needs no privilege."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/oom_score_adj").write_text(FIRST_VICTIM)
