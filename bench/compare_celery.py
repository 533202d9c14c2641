"""Hodei against Celery + Redis: the same shell command submitted and waited for, side by side.

One run on one machine, one system at a time so neither slows the other down:

1. Celery + Redis, set up as a Python user would: this script starts its own throwaway
   ``redis-server`` (no RDB, no AOF) on a free port of 127.0.0.1 as broker and result backend,
   and a worker ``celery -A compare_celery worker --pool=prefork --concurrency=8`` whose one
   task (``run_shell``, defined below) runs the command with ``subprocess.run(["/bin/sh",
   "-c", cmd], capture_output=True)`` and returns its exit code and stdout. Measured:
   ``echo hello`` submit -> result (``apply_async(...).get()``), one job at a time, then jobs/s
   for ``true`` from 16 submitter threads, each submitting and waiting for its result before
   the next. The worker and Redis are stopped before Hodei starts.
2. Hodei: the embedded platform (``hodei dev up``) in a throwaway HODEI_HOME, the local
   provider set to reusable with a warm pool of 8 (written straight into PostgreSQL, as
   bench/execution.py does). Measured the same way, a job's end being its end of log (which
   carries the exit code), plus submit -> first log line: Hodei streams the output while the
   job runs, Celery hands it over with the result only.

Both sides are warmed up first (unmeasured). The table also says how much CPU other processes
on the machine took during each part. At the end the platform gets SIGTERM (it retires its
workers itself), and the script checks that no Celery worker, Redis on its port or agent of
its platform is left running (exit code 1 if one is). Helpers come from bench/execution.py.

    .venv/bin/pip install -e '.[bench]'        # Celery with the Redis client
    apt-get install -y redis-server             # Debian's Redis, when missing
    .venv/bin/python bench/compare_celery.py [--jobs 100] [--round-jobs 1000] [--submitters 16]
                                             [--json PATH]

``--json PATH`` also writes both sides' figures there: per side ``echo_end_p50_ms`` and
``echo_end_p99_ms`` (`echo hello` one at a time, submit -> job's end), ``first_line_p50_ms``
(null for Celery, which shows no output before the end) and ``jobs_per_s`` (the round with the
most submitters), each rounded to 0.1, plus ``failed`` (jobs not succeeded of those measured);
beside them ``jobs``, ``round_jobs``, ``submitters``, ``concurrency`` and ``cpus``.

With the defaults it takes about half a minute on a 2-core machine. Figures depend on
whatever else runs on the machine: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from embedded import embedded_platform
from execution import (
    configure,
    percentile,
    stop_agents,
    submit_and_follow,
    wait_for_pool,
)
from nats.js import JetStreamContext

from hodei_common import eventloop, messaging
from hodei_common.client import ApiClient
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.logs import LogBatch, LogEnd
from hodei_common.settings import Settings

try:
    import celery
    import redis
    from celery import Celery
except ImportError:
    sys.exit("Celery is not installed: .venv/bin/pip install -e '.[bench]' "
             "(or .venv/bin/pip install 'celery[redis]')")

HERE = Path(__file__).resolve().parent
CELERY = str(Path(sys.executable).with_name("celery"))
JOB_DEADLINE_S = 120.0  # a job not done within this long counts as lost
START_DEADLINE_S = 60.0
STOP_GRACE_S = 15.0
HELLO = "echo hello"


# --- the Celery app, as its worker imports it (`celery -A compare_celery`) ----------------
# Broker and result backend come from the command line of the worker (-b, --result-backend)
# and from `app.conf` in this script: both are the Redis this script starts.
app = Celery("compare_celery")
app.conf.update(broker_connection_retry_on_startup=True)


@app.task(name="bench.run_shell")
def run_shell(command: str) -> tuple[int, str]:
    """Run ``command`` with /bin/sh; return its exit code and stdout."""
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, check=False)
    return done.returncode, done.stdout.decode(errors="replace")


# --- measuring -------------------------------------------------------------------------
@dataclass
class Sample:
    """One job as the client saw it: seconds from submit to its end (and to its first line)."""

    end_s: float
    ok: bool  # exit code 0 (and, for `echo hello`, the output "hello")
    first_line_s: float | None = None


@dataclass
class Round:
    """Jobs completed by concurrent submitters, each waiting for its job before the next."""

    submitters: int
    elapsed_s: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def jobs_per_s(self) -> float:
        return len(self.samples) / self.elapsed_s


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def p50(values: list[float]) -> str:
    return ms(statistics.median(values)) if values else "-"


def p99(values: list[float]) -> str:
    return ms(percentile(values, 99)) if values else "-"


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


@dataclass
class CpuMeter:
    """CPU the rest of the machine used during a part of the run: the machine's busy time less
    this process's and its reaped descendants' (the platform reaps its agents, Celery its pool
    processes, and this script the platform, the worker and Redis when the part ends)."""

    wall: float = 0.0
    busy: float = 0.0
    own: float = 0.0

    @staticmethod
    def sample() -> CpuMeter:
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait
        own = sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                    resource.getrusage(resource.RUSAGE_CHILDREN)))
        return CpuMeter(time.perf_counter(), busy, own)

    def others_since(self, start: CpuMeter) -> str:
        capacity = (self.wall - start.wall) * (os.cpu_count() or 1)
        others = max(0.0, (self.busy - start.busy) - (self.own - start.own))
        return f"{others / capacity:.0%} of the machine"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` has exited, without reaping it: while it is a zombie its pid (and so
    its process group id) cannot be taken by another process."""
    if proc.returncode is not None:
        return True
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def group_alive(pgid: int) -> bool:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True,
                          check=False).returncode == 0


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM ``proc`` (a session leader), wait for it, then SIGKILL whatever is left of its
    process group (prefork children of a worker that died, say) and reap it."""
    if not exited(proc):
        proc.send_signal(signal.SIGTERM)
        deadline = time.perf_counter() + grace_s
        while not exited(proc) and time.perf_counter() < deadline:
            time.sleep(0.05)
        if not exited(proc):
            print(f"pid {proc.pid} ignored SIGTERM for {grace_s:g}s: killing it", file=sys.stderr)
    # Unreaped, the leader holds its group id; reaped, a live member still does.
    if proc.returncode is None or group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# --- Celery + Redis --------------------------------------------------------------------
def celery_one(command: str, expect: str | None = None) -> Sample:
    started = time.perf_counter()
    code, out = run_shell.apply_async((command,)).get(timeout=JOB_DEADLINE_S)
    return Sample(time.perf_counter() - started, code == 0 and expect in (None, out.strip()))


def celery_round(submitters: int, jobs: int, command: str = "true") -> Round:
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(jobs):
        todo.put(i)
    samples: list[Sample] = []

    def submit_loop() -> None:
        while True:
            try:
                todo.get_nowait()
            except queue.Empty:
                return
            samples.append(celery_one(command))

    threads = [threading.Thread(target=submit_loop) for _ in range(submitters)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Round(submitters, time.perf_counter() - started, samples)


def start_redis(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.perf_counter() + START_DEADLINE_S
    while True:
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                client.close()
                return proc
        if proc.poll() is not None or time.perf_counter() > deadline:
            stop_process(proc)
            raise SystemExit(f"redis-server did not start:\n{tail(log)}")
        time.sleep(0.05)


def start_worker(url: str, concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [CELERY, "-A", "compare_celery", "-b", url, "--result-backend", url, "worker",
             "--pool=prefork", f"--concurrency={concurrency}", "-l", "WARNING"],
            cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.perf_counter() + START_DEADLINE_S
    while not app.control.ping(timeout=0.5):
        if proc.poll() is not None or time.perf_counter() > deadline:
            stop_process(proc)
            raise SystemExit(f"the Celery worker did not answer a ping:\n{tail(log)}")
    return proc


@dataclass
class Results:
    name: str
    startup: str
    sequential: list[Sample]
    rounds: list[Round]
    others: str = ""


def run_celery(ns: argparse.Namespace, workdir: Path, port: int) -> Results:
    url = f"redis://127.0.0.1:{port}/0"
    app.conf.update(broker_url=url, result_backend=url)
    begun = time.perf_counter()
    redis_server = start_redis(port, workdir / "redis.log")
    worker: subprocess.Popen[bytes] | None = None
    try:
        worker = start_worker(url, ns.concurrency, workdir / "celery-worker.log")
        up_s = time.perf_counter() - begun
        print(f"celery: Redis on port {port} and a worker of {ns.concurrency} processes "
              f"answering in {up_s:.1f}s; {load()}", flush=True)
        # Warm-up (unmeasured): every pool process runs a few tasks, connections are open.
        for _ in range(10):
            celery_one(HELLO, "hello")
        celery_round(ns.submitters, 10 * ns.concurrency)

        sequential = [celery_one(HELLO, "hello") for _ in range(ns.jobs)]
        print(f"celery: {ns.jobs} x `{HELLO}` one at a time, p50 "
              f"{p50([s.end_s for s in sequential])} ms; {load()}", flush=True)
        rounds = [celery_round(count, ns.round_jobs) for count in ns.submitter_counts]
        for r in rounds:
            print(f"celery: {ns.round_jobs} x `true` from {r.submitters} submitters, "
                  f"{r.jobs_per_s:.1f} jobs/s; {load()}", flush=True)
        startup = f"{up_s:.1f} s (Redis + worker pong)"
        return Results(f"Celery {celery.__version__} + Redis", startup, sequential, rounds)
    finally:
        if worker is not None:
            stop_process(worker)
        stop_process(redis_server)
        app.close()


# --- Hodei -----------------------------------------------------------------------------
async def hodei_one(api: ApiClient, js: JetStreamContext, command: str,
                    expect: str | None = None) -> Sample:
    """Submit ``command`` as `hodei job run` does, follow its log until the end marker (which
    has the exit code)."""
    started = time.perf_counter()
    live = await submit_and_follow(api, js, SubmitJob(command=command, name="bench-compare"))
    first: float | None = None
    text: list[str] = []
    async for message in live.messages(idle_timeout_s=JOB_DEADLINE_S):
        if isinstance(message, LogBatch):
            if first is None:
                first = time.perf_counter() - started
            text += [line.text for line in message.lines]
        elif isinstance(message, LogEnd):
            ok = (message.state is JobState.SUCCEEDED and message.exit_code == 0
                  and expect in (None, "\n".join(text).strip()))
            return Sample(time.perf_counter() - started, ok, first)
    raise SystemExit(f"job {live.job_id}: no end of log within {JOB_DEADLINE_S:g}s of silence")


async def hodei_round(settings: Settings, submitters: int, jobs: int,
                      command: str = "true") -> Round:
    todo = list(range(jobs))
    samples: list[Sample] = []

    async def submit_loop() -> None:
        nc = await messaging.connect(settings, name="bench-compare", initial_attempts=3)
        api = ApiClient(nc, timeout_s=30)
        js = nc.jetstream()
        try:
            while todo:
                todo.pop()
                samples.append(await hodei_one(api, js, command))
        finally:
            await nc.close()

    started = time.perf_counter()
    await asyncio.gather(*(submit_loop() for _ in range(submitters)))
    return Round(submitters, time.perf_counter() - started, samples)


async def hodei_measure(ns: argparse.Namespace, settings: Settings,
                        db: asyncpg.Connection, up_s: float) -> Results:
    nc = await messaging.connect(settings, name="bench-compare", initial_attempts=3)
    try:
        api = ApiClient(nc, timeout_s=30)
        js = nc.jetstream()
        await configure(db, mode="reusable", min_idle=ns.concurrency,
                        max_workers=ns.concurrency)
        pool_s = await wait_for_pool(db, ready=ns.concurrency)
        print(f"hodei: platform up in {up_s:.1f}s, {ns.concurrency} READY reusable workers "
              f"{pool_s:.1f}s later; {load()}", flush=True)
        # Warm-up (unmeasured), as for Celery; then the pool is whole again.
        for _ in range(10):
            await hodei_one(api, js, HELLO, "hello")
        await hodei_round(settings, ns.submitters, 10 * ns.concurrency)
        await wait_for_pool(db, ready=ns.concurrency)

        sequential = [await hodei_one(api, js, HELLO, "hello") for _ in range(ns.jobs)]
        print(f"hodei: {ns.jobs} x `{HELLO}` one at a time, p50 "
              f"{p50([s.end_s for s in sequential])} ms; {load()}", flush=True)
        rounds = []
        for count in ns.submitter_counts:
            await wait_for_pool(db, ready=ns.concurrency)
            rounds.append(await hodei_round(settings, count, ns.round_jobs))
            print(f"hodei: {ns.round_jobs} x `true` from {count} submitters, "
                  f"{rounds[-1].jobs_per_s:.1f} jobs/s; {load()}", flush=True)
        startup = f"{up_s:.1f} s + {pool_s:.1f} s (platform + pool of {ns.concurrency})"
        return Results("Hodei (reusable pool)", startup, sequential, rounds)
    finally:
        await nc.close()


async def run_hodei(ns: argparse.Namespace, workdir: Path) -> tuple[Results, str, list[str]]:
    """Measure Hodei; return the results, its NATS URL (which names its agents) and notes."""
    notes: list[str] = []
    begun = time.perf_counter()
    async with embedded_platform() as settings:
        nats_url = settings.resolved_nats_url()
        db = await asyncpg.connect(settings.resolved_database_url())
        try:
            results = await hodei_measure(ns, settings, db, time.perf_counter() - begun)
        finally:
            await db.close()
        stopping = time.perf_counter()
    notes.append(f"hodei: the platform stopped {time.perf_counter() - stopping:.1f}s after "
                 f"SIGTERM")
    # Backstop only: the platform retires its workers itself when it stops.
    outlived = await stop_agents(nats_url, grace_s=5)
    if outlived:
        notes.append(f"hodei: {outlived} agents outlived the platform; stopped them")
    return results, nats_url, notes


# --- after both --------------------------------------------------------------------------
def pgrep(pattern: str) -> list[tuple[int, str]]:
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True,
                         check=False).stdout
    return [(int(pid), cmd) for pid, _, cmd in (line.partition(" ") for line in
                                                out.splitlines())]


def environ_has(pid: int, entry: str) -> bool:
    try:
        environ = (Path("/proc") / str(pid) / "environ").read_bytes()
    except OSError:
        return False
    return entry.encode() in environ.split(b"\0")


def leftovers(port: int, nats_url: str) -> list[str]:
    """Processes of this run still alive: a Celery worker or Redis on ``port``, an agent of
    the platform whose NATS is ``nats_url`` (other runs on the machine are not ours)."""
    found = [f"{pid} {cmd}" for pid, cmd in pgrep(f"celery .*127\\.0\\.0\\.1:{port}/")]
    found += [f"{pid} {cmd}" for pid, cmd in pgrep(f"redis-server .*:{port}( |$)")]
    if nats_url:
        found += [f"{pid} {cmd}" for pid, cmd in pgrep("hodei_agent")
                  if environ_has(pid, f"HODEI_NATS_URL={nats_url}")]
    return found


def print_table(ns: argparse.Namespace, hodei: Results, cel: Results) -> None:
    def failed(r: Results) -> str:
        bad = sum(not s.ok for s in r.sequential) + sum(
            not s.ok for rnd in r.rounds for s in rnd.samples)
        total = len(r.sequential) + sum(len(rnd.samples) for rnd in r.rounds)
        return f"{bad} of {total}"

    def ends(samples: list[Sample]) -> str:
        values = [s.end_s for s in samples]
        return f"{p50(values)} / {p99(values)}"

    h_first = [s.first_line_s for s in hodei.sequential if s.first_line_s is not None]
    none = "none until the task ends"
    rows = [
        ("", hodei.name, cel.name),
        (f"`{HELLO}` one at a time ({ns.jobs} jobs), ms p50 / p99", "", ""),
        ("  submit -> job's end", ends(hodei.sequential), ends(cel.sequential)),
        ("  submit -> first output line", f"{p50(h_first)} / {p99(h_first)}", none),
    ]
    for h_round, c_round in zip(hodei.rounds, cel.rounds, strict=True):
        rows += [
            (f"`true` x {ns.round_jobs}, {h_round.submitters} submitters", "", ""),
            ("  jobs/s", f"{h_round.jobs_per_s:.1f}", f"{c_round.jobs_per_s:.1f}"),
            ("  submit -> job's end, ms p50 / p99", ends(h_round.samples),
             ends(c_round.samples)),
        ]
    rows += [
        ("jobs not succeeded (of those measured)", failed(hodei), failed(cel)),
        ("ready to take jobs after", hodei.startup, cel.startup),
        ("CPU used meanwhile by other processes", hodei.others, cel.others),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"\n{os.cpu_count()} CPUs; {ns.concurrency} worker processes on each side"
          f"{'; p99 over 100 jobs or fewer is their maximum' if ns.jobs <= 100 else ''}\n")
    for i, (label, h, c) in enumerate(rows):
        print(f"| {label:<{widths[0]}} | {h:>{widths[1]}} | {c:>{widths[2]}} |")
        if i == 0:
            print(f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 1)}:|{'-' * (widths[2] + 1)}:|")
    print("\nA job's end: for Hodei its end of log (which carries the exit code), for Celery "
          "its result\n(exit code and stdout). Celery shows no output until the task ends: "
          "stdout comes back with\nthe result. Hodei streams each line while the job runs. "
          "Hodei commits every job to PostgreSQL;\nthis Redis keeps nothing on disk.")


def figures(r: Results) -> dict[str, float | int | None]:
    """One side's figures for ``--json``: milliseconds and jobs/s rounded to 0.1."""
    ends = [s.end_s for s in r.sequential]
    firsts = [s.first_line_s for s in r.sequential if s.first_line_s is not None]
    largest = max(r.rounds, key=lambda rnd: rnd.submitters)
    return {
        "echo_end_p50_ms": round(statistics.median(ends) * 1000, 1),
        "echo_end_p99_ms": round(percentile(ends, 99) * 1000, 1),
        "first_line_p50_ms": round(statistics.median(firsts) * 1000, 1) if firsts else None,
        "jobs_per_s": round(largest.jobs_per_s, 1),
        "failed": sum(not s.ok for s in r.sequential)
        + sum(not s.ok for rnd in r.rounds for s in rnd.samples),
    }


def write_json(path: Path, ns: argparse.Namespace, hodei: Results, cel: Results) -> None:
    result = {
        "hodei": figures(hodei),
        "celery": figures(cel),
        "jobs": ns.jobs,
        "round_jobs": ns.round_jobs,
        "submitters": max(ns.submitter_counts),
        "concurrency": ns.concurrency,
        "cpus": os.cpu_count(),
    }
    path.write_text(json.dumps(result, indent=2) + "\n")


async def main(ns: argparse.Namespace) -> int:
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is missing: apt-get install -y redis-server")
    workdir = Path(tempfile.mkdtemp(prefix="hodei-vs-celery-"))
    workdir.chmod(0o755)
    port = free_port()
    nats_url = ""
    begun = time.perf_counter()
    print(f"{os.cpu_count()} CPUs, {load()}; Celery first, then Hodei (never both at once)",
          flush=True)
    try:
        start = CpuMeter.sample()
        cel = await asyncio.to_thread(run_celery, ns, workdir, port)
        cel.others = CpuMeter.sample().others_since(start)
        start = CpuMeter.sample()
        hodei, nats_url, notes = await run_hodei(ns, workdir)
        hodei.others = CpuMeter.sample().others_since(start)
        for note in notes:
            print(note)
        print_table(ns, hodei, cel)
        if ns.json is not None:
            write_json(ns.json, ns, hodei, cel)
    finally:
        left = leftovers(port, nats_url)
        print(f"\ntotal {time.perf_counter() - begun:.0f}s; {load()}; processes left behind "
              f"(celery, redis-server :{port}, this platform's hodei_agent): {len(left)}")
        for line in left:
            print(f"  {line}")
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if left else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100,
                        help="`echo hello` jobs measured one at a time, on each side")
    parser.add_argument("--round-jobs", type=int, default=1000,
                        help="`true` jobs per throughput round, on each side")
    parser.add_argument("--submitters", default="16",
                        help="comma-separated concurrent submitter counts, one round each")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="Celery worker processes, and Hodei's warm pool size")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write both sides' figures here as JSON (`echo hello` p50 "
                        "and p99 to the job's end, p50 to the first line, jobs/s of the round "
                        "with the most submitters)")
    args = parser.parse_args()
    args.submitter_counts = [int(c) for c in args.submitters.split(",")]
    args.submitters = max(args.submitter_counts)  # for the warm-up rounds
    sys.exit(eventloop.run(main(args)))
