"""A job's output through the real agent: byte for byte, in order, bounded, capped loudly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hodei_common.contracts.agent import Outcome
from hodei_common.contracts.logs import LogStream
from hodei_common.contracts.workers import WorkerMode
from tests.agent.harness import Platform

pytestmark = pytest.mark.nats

# Every kind of output the old system mangled, on both streams.
AWKWARD = r"""
printf 'plain line\n'
printf 'bad utf-8 \377\376 here\n'
printf 'progress 10%%\rprogress 50%%\rprogress 100%%\n'
printf 'windows line\r\n'
printf 'to stderr\n' >&2
head -c 1048576 /dev/zero | tr '\0' x
printf '\n'
python3 -c "import random, sys; random.seed(6); sys.stdout.buffer.write(random.randbytes(200000))"
printf 'err without newline' >&2
printf 'last words'
"""


def expected(command: str) -> tuple[bytes, bytes]:
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, check=True)
    return done.stdout, done.stderr


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmHWM:")))


async def test_output_is_kept_byte_for_byte_on_both_streams(platform: Platform) -> None:
    await platform.start_agent()
    job = await platform.assign(AWKWARD)
    finished = await platform.finished(job, within_s=30)
    assert finished.outcome is Outcome.SUCCEEDED
    out, err = expected(AWKWARD)
    assert platform.output(job, LogStream.STDOUT) == out
    assert platform.output(job, LogStream.STDERR) == err
    texts = platform.texts(job)
    # Progress bars come line by line as they redraw, not as one line at the end.
    assert texts[2:5] == ["progress 10%", "progress 50%", "progress 100%"]
    assert "bad utf-8 \ufffd\ufffd here" in texts


async def test_a_million_lines_arrive_in_order_while_the_agent_stays_small(
    platform: Platform,
) -> None:
    platform.serve(WorkerMode.REUSABLE)  # the agent stays, so its peak memory can be read
    agent = await platform.start_agent()
    # 60 MB of output: far more than the agent may hold at once.
    job = await platform.assign("seq -f 'line %07.0f of the one million lines of this job' "
                                "1 1000000")
    finished = await platform.finished(job, within_s=120)
    assert finished.log_lines == 1_000_000
    lines = platform.lines(job)
    assert [line.seq for line in lines] == list(range(1, 1_000_001))
    assert lines[0].text == "line 0000001 of the one million lines of this job"
    assert lines[-1].text == "line 1000000 of the one million lines of this job"
    assert peak_rss_kib(agent.proc.pid) < 120 * 1024


async def test_output_past_the_byte_cap_is_dropped_with_a_notice(platform: Platform) -> None:
    await platform.start_agent()
    job = await platform.assign("seq 1 100000; echo done >&2", log_max_bytes=1000)
    finished = await platform.finished(job, within_s=30)
    assert finished.outcome is Outcome.SUCCEEDED  # the job itself ran to its end
    lines = platform.lines(job)
    kept = [line.text for line in lines if line.stream is LogStream.STDOUT]
    assert kept == [str(i) for i in range(1, len(kept) + 1)]
    assert sum(len(t) + 1 for t in kept) <= 1000
    notices = [line.text for line in lines if line.stream is LogStream.SYSTEM]
    assert len(notices) == 2
    assert "reached its cap of 1000 bytes" in notices[0]
    dropped = sum(len(str(i)) + 1 for i in range(len(kept) + 1, 100001)) + len("done\n")
    assert f"{dropped} bytes in {100000 - len(kept) + 1} lines" in notices[1]
    assert lines[-1].stream is LogStream.SYSTEM
