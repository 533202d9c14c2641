"""CPU per job, per process: where a job's time goes on the embedded platform.

Runs `hodei dev up` in a throwaway HODEI_HOME with a warm reusable pool (as
bench/compare_celery.py does), runs ``--jobs`` x ``true`` from ``--submitters`` submitters
after a warm-up, and reads from ``/proc`` the CPU each part of the platform used meanwhile:

- platform services: the `hodei dev up` process (api, relay, scheduler, provisioner,
  supervisor and logs in one process);
- agents: the live agents' CPU plus what the platform reaped of ended ones;
- PostgreSQL: the postmaster, its backends, and what it reaped;
- NATS: the nats-server;
- client: this process (the submitters and their log readers).

Printed as milliseconds of CPU per job and share of the total; ``--json PATH`` writes the
same figures. A quiet machine gives figures worth comparing: run it before and after a
change. Nothing asserts a time.

    .venv/bin/python bench/cost.py [--jobs 1000] [--submitters 16] [--pool 8] [--json PATH]
                                   [--env HODEI_X=Y]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from compare_celery import hodei_round
from embedded import embedded_platform
from execution import configure, wait_for_pool

from hodei_common import eventloop
from hodei_common.settings import Settings

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
PARTS = ("platform services", "agents", "PostgreSQL", "NATS", "client")


@dataclass(frozen=True)
class Stat:
    """One process's CPU so far (own and reaped children's), in seconds, and its parent."""

    pid: int
    ppid: int
    own_s: float
    reaped_s: float
    cmdline: list[str]


def read_stat(pid: int) -> Stat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:  # ended meanwhile
        return None
    # Fields after the command name (which may hold spaces), from field 3 (state) on.
    fields = raw[raw.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return Stat(pid, int(fields[1]), (utime + stime) * TICK_S, (cutime + cstime) * TICK_S,
                [a for a in cmdline.split("\0") if a])


def processes() -> list[Stat]:
    found = (read_stat(int(p)) for p in os.listdir("/proc") if p.isdigit())
    return [s for s in found if s is not None]


def agents_of(stats: list[Stat], platform: int) -> tuple[list[Stat], list[Stat]]:
    """The platform's local agent templates, and its agents: spawned by it, or forked by one
    of its templates."""
    templates = [s for s in stats if s.ppid == platform
                 and any(a == "hodei_agent.template" for a in s.cmdline)]
    parents = {platform, *(t.pid for t in templates)}
    agents = [s for s in stats if s.ppid in parents and s.pid not in parents
              and any("hodei_agent" in a for a in s.cmdline)]
    return templates, agents


def platform_pid(home: Path) -> int:
    """The `hodei dev up` process serving ``home``."""
    for s in processes():
        if s.cmdline[-2:] == ["dev", "up"]:
            try:
                environ = Path(f"/proc/{s.pid}/environ").read_bytes()
            except OSError:
                continue
            if f"HODEI_HOME={home}".encode() in environ.split(b"\0"):
                return s.pid
    raise SystemExit(f"no `hodei dev up` process serving {home}")


def sample(home: Path, platform: int) -> dict[str, float]:
    """CPU seconds used so far by each part of the platform of ``home``."""
    stats = processes()
    by_pid = {s.pid: s for s in stats}
    used = dict.fromkeys(PARTS, 0.0)
    own = resource.getrusage(resource.RUSAGE_SELF)
    used["client"] = own.ru_utime + own.ru_stime
    postmaster = next((s for s in stats if "-D" in s.cmdline
                       and str(home) in s.cmdline[s.cmdline.index("-D") + 1]), None)
    templates, agents = agents_of(stats, platform)
    # Ended agents are reaped by the platform (spawned) or by a template (forked), whose own
    # CPU (importing once, forking) is the agents' too.
    used["agents"] += sum(s.own_s for s in agents) + sum(t.own_s + t.reaped_s for t in templates)
    machinery = {s.pid for s in (*templates, *agents)}
    for s in stats:
        if s.pid == platform:
            used["platform services"] += s.own_s
            used["agents"] += s.reaped_s
        elif s.pid in machinery:
            continue
        elif postmaster is not None and (s.pid == postmaster.pid or s.ppid == postmaster.pid):
            used["PostgreSQL"] += s.own_s + (s.reaped_s if s.pid == postmaster.pid else 0.0)
        elif s.cmdline and s.cmdline[0].endswith("nats-server") and \
                any(str(home) in a for a in s.cmdline):
            used["NATS"] += s.own_s
    if platform not in by_pid:
        raise SystemExit("the platform ended during the run")
    return used


async def measure(ns: argparse.Namespace) -> dict[str, object]:
    extra = dict(pair.split("=", 1) for pair in ns.env)
    async with embedded_platform(extra) as settings:
        home = settings.home
        assert home is not None
        platform = platform_pid(home)
        db = await asyncpg.connect(settings.resolved_database_url())
        try:
            await configure(db, mode="reusable", min_idle=ns.pool, max_workers=ns.pool)
            await wait_for_pool(db, ready=ns.pool)
            await warm_up(settings, ns)
            await wait_for_pool(db, ready=ns.pool)
            before, started = sample(home, platform), time.perf_counter()
            done = await hodei_round(settings, ns.submitters, ns.jobs)
            wall_s, after = time.perf_counter() - started, sample(home, platform)
        finally:
            await db.close()
    failed = sum(not s.ok for s in done.samples)
    per_job_ms = {part: (after[part] - before[part]) * 1000 / ns.jobs for part in PARTS}
    return {"jobs": ns.jobs, "submitters": ns.submitters, "pool": ns.pool,
            "failed": failed, "wall_s": round(wall_s, 2),
            "jobs_per_s": round(ns.jobs / wall_s, 1),
            "cpu_ms_per_job": {k: round(v, 2) for k, v in per_job_ms.items()},
            "cpu_ms_per_job_total": round(sum(per_job_ms.values()), 2),
            "cpus": os.cpu_count()}


async def warm_up(settings: Settings, ns: argparse.Namespace) -> None:
    """Unmeasured: every worker and connection has run a few jobs."""
    await hodei_round(settings, ns.submitters, 10 * ns.pool)


def report(result: dict[str, object]) -> None:
    per_job = result["cpu_ms_per_job"]
    assert isinstance(per_job, dict)
    total = float(str(result["cpu_ms_per_job_total"]))
    print(f"{result['jobs']} x `true` from {result['submitters']} submitters, reusable pool "
          f"of {result['pool']}: {result['jobs_per_s']} jobs/s, {result['failed']} failed; "
          f"{result['cpus']} CPUs")
    print("\n| part | CPU ms per job | share |\n|---|---:|---:|")
    for part, value in per_job.items():
        print(f"| {part} | {value:.2f} | {value / total:.0%} |")
    print(f"| total | {total:.2f} | |")
    print(f"\nThe CPU total allows at most {os.cpu_count() or 1} x 1000 / {total:.1f} = "
          f"{(os.cpu_count() or 1) * 1000 / total:.0f} jobs/s on this machine.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--submitters", type=int, default=16)
    parser.add_argument("--pool", type=int, default=8, help="reusable workers kept warm")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--env", action="append", default=[], metavar="HODEI_NAME=VALUE",
                        help="a setting for the platform (repeatable), for A/B runs")
    ns = parser.parse_args()
    if ns.jobs < 1 or ns.submitters < 1 or ns.pool < 1:
        raise SystemExit("error: --jobs, --submitters and --pool must be at least 1")
    result = eventloop.run(measure(ns))
    report(result)
    if ns.json:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
