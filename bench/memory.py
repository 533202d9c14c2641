"""Memory of the embedded platform's processes, read from ``/proc/<pid>/status``.

The processes of one platform (the `hodei dev up` process serving a HODEI_HOME) are sorted
into parts: the platform process, its nats-server, PostgreSQL (the postmaster and its
backends), the agents it spawned, and this process (the client). :class:`Monitor` samples them
about every second while a benchmark runs, with whatever else the benchmark wants recorded at
the same moment (a count of jobs, say).

VmRSS counts the shared memory a process touched: summed over PostgreSQL's backends it counts
the shared buffers once per backend, which is why RssAnon (private memory) is kept beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from cost import Stat, agents_of, processes

PLATFORM = "platform"
NATS = "nats-server"
POSTGRES = "PostgreSQL"
AGENTS = "agents"
CLIENT = "client"
PARTS = (PLATFORM, NATS, POSTGRES, AGENTS, CLIENT)
BACKENDS = "PostgreSQL backends"  # within POSTGRES: all of it but the postmaster


@dataclass(frozen=True)
class Mem:
    """One part's memory at one moment, in KiB: summed over its processes, and its largest."""

    processes: int = 0
    rss_kib: int = 0
    anon_kib: int = 0
    largest_kib: int = 0  # the largest process's VmRSS
    hwm_kib: int = 0  # the largest VmHWM (peak RSS) of its processes so far

    def add(self, status: dict[str, int]) -> Mem:
        rss = status.get("VmRSS", 0)
        return Mem(self.processes + 1, self.rss_kib + rss,
                   self.anon_kib + status.get("RssAnon", 0), max(self.largest_kib, rss),
                   max(self.hwm_kib, status.get("VmHWM", 0)))


@dataclass(frozen=True)
class Sample:
    """Every part's memory at ``t`` (seconds since the monitor started) and the benchmark's own
    figures taken then."""

    t: float
    mem: dict[str, Mem]
    extra: dict[str, int] = field(default_factory=dict)


def read_status(pid: int) -> dict[str, int] | None:
    """The ``kB`` fields of /proc/<pid>/status (None once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.endswith("kB"):
            found[key] = int(value.split()[0])
    return found


def classify(stats: list[Stat], home: Path, platform: int) -> dict[str, list[int]]:
    """The pids of each part of the platform serving ``home``."""
    parts: dict[str, list[int]] = {part: [] for part in (*PARTS, BACKENDS)}
    parts[PLATFORM].append(platform)
    parts[CLIENT].append(os.getpid())
    postmaster = next((s.pid for s in stats if "-D" in s.cmdline[:-1]
                       and str(home) in s.cmdline[s.cmdline.index("-D") + 1]), None)
    templates, agents = agents_of(stats, platform)
    parts[AGENTS] = [s.pid for s in agents]  # the template (imported once, forks) apart
    machinery = {s.pid for s in (*templates, *agents)}
    for s in stats:
        if s.pid in machinery:
            continue
        elif postmaster is not None and postmaster in (s.pid, s.ppid):
            parts[POSTGRES].append(s.pid)
            if s.pid != postmaster:
                parts[BACKENDS].append(s.pid)
        elif s.cmdline and s.cmdline[0].endswith("nats-server") and \
                any(str(home) in a for a in s.cmdline):
            parts[NATS].append(s.pid)
    return parts


def measure(home: Path, platform: int) -> dict[str, Mem]:
    """Every part's memory now."""
    found: dict[str, Mem] = {}
    for part, pids in classify(processes(), home, platform).items():
        mem = Mem()
        for pid in pids:
            status = read_status(pid)
            if status is not None:
                mem = mem.add(status)
        found[part] = mem
    return found


class Monitor:
    """Samples the platform's memory every ``interval_s`` (with ``extra()``'s figures) until
    the ``running()`` block ends."""

    def __init__(self, home: Path, platform: int, interval_s: float = 1.0,
                 extra: Callable[[], Awaitable[dict[str, int]]] | None = None) -> None:
        self.home = home
        self.platform = platform
        self.interval_s = interval_s
        self.extra = extra
        self.samples: list[Sample] = []
        self._started = 0.0

    async def sample(self) -> Sample:
        extra = await self.extra() if self.extra is not None else {}
        mem = await asyncio.to_thread(measure, self.home, self.platform)
        taken = Sample(time.perf_counter() - self._started, mem, extra)
        self.samples.append(taken)
        return taken

    async def _loop(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.interval_s)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Monitor]:
        self._started = time.perf_counter()
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.sample()  # the state at the end


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def peak(samples: list[Sample], part: str) -> int:
    """The part's largest summed VmRSS over ``samples``."""
    return max((s.mem[part].rss_kib for s in samples), default=0)


def mean_rss(samples: list[Sample], part: str) -> float:
    return sum(s.mem[part].rss_kib for s in samples) / len(samples) if samples else 0.0


def mean_anon(samples: list[Sample], part: str) -> float:
    return sum(s.mem[part].anon_kib for s in samples) / len(samples) if samples else 0.0
