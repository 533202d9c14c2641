"""`HODEI_LOG_FORMAT=json`: one JSON object per line that a log collector joins to traces."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from hodei_common import logconfig, tracing
from hodei_common.consumer import ConsumerSpec, consume, decode
from hodei_common.contracts import subjects
from hodei_common.errors import PermanentError
from hodei_common.runner import HodeiService, Loop
from hodei_common.settings import Settings
from hodei_common.testing.plugin import as_test_user
from hodei_common.testing.services import running
from tests.cli.conftest import HODEI

JOB_ID = str(uuid4())

# What a process does with HODEI_LOG_FORMAT=json: a record inside a span and a job, one
# naming its job by ``extra``, one outside both, and an exception.
PROGRAM = f"""
import logging
from hodei_common import logconfig, tracing
from hodei_common.consumer import ConsumerSpec, consume, decode
from hodei_common.contracts import subjects
from hodei_common.errors import PermanentError

logconfig.configure_logging("INFO", service="hodei-probe")
tracing.setup_tracing("probe")
log = logging.getLogger("probe")
with tracing.tracer().start_as_current_span("work") as span:
    with logconfig.job_context({JOB_ID!r}):
        log.info("inside %s", "both")
    ids = span.get_span_context()
    print(f"{{ids.trace_id:032x}} {{ids.span_id:016x}}")
log.warning("named by extra", extra={{"job_id": "from-extra"}})
log.info("outside")
try:
    raise ValueError("two\\nlines")
except ValueError:
    log.exception("it broke")
"""


def run_program(env_format: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, logconfig.LOG_FORMAT_ENV: env_format}
    return subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_json_format_prints_one_object_per_line_with_the_span_and_the_job() -> None:
    done = run_program("json")
    assert done.returncode == 0, done.stderr
    trace_id, span_id = done.stdout.split()
    lines = done.stderr.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 4, lines  # the traceback's lines stay inside its record

    inside, by_extra, outside, broke = records
    assert inside["message"] == "inside both"
    assert (inside["level"], inside["service"], inside["logger"]) == ("INFO", "hodei-probe",
                                                                      "probe")
    assert (inside["trace_id"], inside["span_id"], inside["job_id"]) == (trace_id, span_id,
                                                                         JOB_ID)
    assert inside["time"].endswith("Z")
    assert by_extra["job_id"] == "from-extra"
    assert by_extra["level"] == "WARNING"
    for record in (by_extra, outside):  # no span is current there: no ids at all
        assert "trace_id" not in record
        assert "span_id" not in record
    assert "job_id" not in outside
    assert broke["message"] == "it broke"
    assert "ValueError: two\nlines" in broke["exception"]


def test_text_format_is_the_default_line() -> None:
    done = run_program("")
    assert done.returncode == 0, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.endswith(" INFO probe: inside both")


async def test_a_bad_log_format_is_one_error_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env.update(HODEI_HOME=str(tmp_path / "home"), HODEI_LOG_FORMAT="yaml")
    proc = await asyncio.create_subprocess_exec(
        HODEI, "dev", "up", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert err.decode() == "error: HODEI_LOG_FORMAT must be text or json (got 'yaml')\n"
    assert out == b""
    assert not (tmp_path / "home" / "dev.json").exists()


class Chatty(HodeiService):
    """A service whose loop logs one line in a span and a job, as a handler would."""

    name = "chatty"

    def loops(self) -> list[Loop]:
        return [self._talk]

    async def _talk(self) -> None:
        with tracing.tracer().start_as_current_span("handle"), \
                logconfig.job_context(JOB_ID):
            logging.getLogger("chatty").info("handled")
        await self.stopping.wait()


@pytest.fixture
def json_records() -> Iterator[io.StringIO]:
    """What the ``chatty`` logger writes, formatted as HODEI_LOG_FORMAT=json would."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logconfig.JsonFormatter("the-process"))
    logger = logging.getLogger("chatty")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


@pytest.mark.nats
@pytest.mark.postgres
async def test_a_service_names_itself_in_its_records_beside_others_in_one_process(
    settings: Settings, json_records: io.StringIO
) -> None:
    async with running([Chatty(as_test_user(settings))]):  # a role of its own: none
        logging.getLogger("chatty").info("from the process")
    records: list[dict[str, Any]] = [json.loads(line)
                                     for line in json_records.getvalue().splitlines()]
    handled = next(r for r in records if r["message"] == "handled")
    assert handled["service"] == "hodei-chatty"
    assert handled["job_id"] == JOB_ID
    assert len(handled["trace_id"]) == 32
    assert len(handled["span_id"]) == 16
    outside = next(r for r in records if r["message"] == "from the process")
    assert outside["service"] == "the-process"
    assert "job_id" not in outside


class Probe(msgspec.Struct, frozen=True):
    job_id: str | None = None


@pytest.mark.nats
async def test_a_consumer_s_lines_name_the_job_of_the_message_handled_and_no_other(
    js: JetStreamContext, consumer_records: io.StringIO
) -> None:
    chatty = logging.getLogger("chatty")
    handled: list[str] = []
    stopping = asyncio.Event()

    async def handler(msg: Msg) -> None:
        probe = decode(msg, Probe)
        chatty.info("handling %s", probe.job_id)
        handled.append(msg.subject)
        if len(handled) == 3:
            stopping.set()
        if probe.job_id == JOB_ID:
            raise PermanentError("refused")  # the consumer's own line names the job too

    created = subjects.job_event(JOB_ID, subjects.JOB_CREATED)
    for body in ({"job_id": JOB_ID}, {}, {"job_id": "other"}):
        await js.publish(created, msgspec.json.encode(body))
    spec = ConsumerSpec(stream=subjects.JOB_EVENTS_STREAM, durable="log-probe")
    await asyncio.wait_for(consume(js, spec, handler, stopping, poll_s=0.1), 30)

    chatty.info("after")
    records = [json.loads(line) for line in consumer_records.getvalue().splitlines()]
    assert [(r["message"], r.get("job_id")) for r in records] == [
        (f"handling {JOB_ID}", JOB_ID),
        (f"log-probe: dropping {created}: refused", JOB_ID),
        ("handling None", None), ("handling other", "other"), ("after", None)]


@pytest.fixture
def consumer_records(json_records: io.StringIO) -> Iterator[io.StringIO]:
    """The consumer's own lines too."""
    handler = logging.getLogger("chatty").handlers[-1]
    logger = logging.getLogger("hodei_common.consumer")
    logger.addHandler(handler)
    try:
        yield json_records
    finally:
        logger.removeHandler(handler)
