"""Log benchmark: one job's log to one `hodei job logs --follow` reader, end to end.

Starts the embedded platform (`hodei dev up`) in a throwaway HODEI_HOME, queues jobs and
reads each one's log with the real CLI, `hodei job logs ID --follow`, attached as the job
starts (a subprocess whose stdout this script reads):

1. throughput: a job printing ``--lines`` lines (`seq`) as fast as it can, after a 1 s pause
   that lets the reader attach first; lines/s from the first byte the reader printed to its
   last (the job, agent, JetStream, reader and its stdout pipe all running at once; each line
   once and in order, checked);
2. latency: a job printing ``--rate`` lines/s for ``--seconds`` s, each line holding the time
   it was written; p50/p99 of (time the reader's output reached this script - that time).

    .venv/bin/python bench/logs.py [--lines 1000000] [--rate 1000] [--seconds 10]

Figures depend on whatever else runs on the machine: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

from embedded import HODEI, embedded_platform

from hodei_common.settings import Settings

# Writes one line per period, each stamped with the wall clock (ns) when written.
PACED = """
import sys, time
rate, seconds = {rate}, {seconds}
start = time.time() + 0.5
for i in range(rate * seconds):
    delay = start + i / rate - time.time()
    if delay > 0:
        time.sleep(delay)
    sys.stdout.write(f"{{time.time_ns()}}\\n")
    sys.stdout.flush()
"""


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env["HODEI_HOME"] = str(settings.home)
    return env


async def hodei(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(HODEI, *args, env=env,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode:
        raise SystemExit(f"hodei {' '.join(args)} failed ({proc.returncode})")
    return out.decode().strip()


async def follow(env: dict[str, str], command: str) -> asyncio.subprocess.Process:
    """Queue ``command`` and attach `hodei job logs --follow` to it at once."""
    job_id = await hodei(env, "job", "queue", "--command", command)
    return await asyncio.create_subprocess_exec(
        HODEI, "job", "logs", job_id, "--follow", env=env, stdout=asyncio.subprocess.PIPE,
        limit=1 << 20)


async def throughput(env: dict[str, str], lines: int) -> None:
    reader = await follow(env, f"sleep 1; seq 1 {lines}")
    assert reader.stdout is not None
    first = last = 0.0
    count = 0
    expected = 1
    rest = b""
    while chunk := await reader.stdout.read(1 << 16):
        last = time.perf_counter()
        first = first or last
        *done, rest = (rest + chunk).split(b"\n")
        for line in done:
            if int(line) != expected:
                raise SystemExit(f"line {expected} expected, {line!r} read")
            expected += 1
        count += len(done)
    await reader.wait()
    if count != lines:
        raise SystemExit(f"{count} lines read of {lines}")
    took = last - first
    print(f"| throughput | {lines} | {took:.2f} | {lines / took:,.0f} |", flush=True)


async def latency(env: dict[str, str], rate: int, seconds: int) -> None:
    script = PACED.format(rate=rate, seconds=seconds)
    reader = await follow(env, f"python3 -c '{script}'")
    assert reader.stdout is not None
    delays = []
    while line := await reader.stdout.readline():
        delays.append(time.time() - int(line) / 1e9)
    await reader.wait()
    if len(delays) != rate * seconds:
        raise SystemExit(f"{len(delays)} lines read of {rate * seconds}")
    delays.sort()
    p50 = statistics.median(delays) * 1000
    p99 = delays[int(0.99 * len(delays))] * 1000
    print(f"| latency at {rate} lines/s | {len(delays)} | {p50:.2f} | {p99:.2f} | "
          f"{delays[-1] * 1000:.2f} |", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    async with embedded_platform() as settings:
        env = cli_env(settings)
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
        await throughput(env, 10_000)  # warm-up: imports, connections, query plans
        print("| round | lines | seconds | lines/s |\n|---|---:|---:|---:|")
        for _ in range(args.rounds):
            await throughput(env, args.lines)
        print("\n| round | lines | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|")
        for _ in range(args.rounds):
            await latency(env, args.rate, args.seconds)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    asyncio.run(main())
