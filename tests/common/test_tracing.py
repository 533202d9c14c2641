"""Traces leave through the standard OTEL_* variables and follow a job from request to stream."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hodei_common.client import ApiClient
from hodei_common.contracts import subjects
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually
from hodei_common.testing.plugin import platform_env
from tests.otlp import OtlpReceiver

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


async def test_submit_is_exported_over_otlp_and_its_event_continues_the_callers_trace(
    settings: Settings, nc: NATS, js: JetStreamContext, receiver: OtlpReceiver
) -> None:
    env = {
        **os.environ,
        **platform_env(settings),
        **receiver.env(),
    }
    api = await asyncio.create_subprocess_exec(sys.executable, "-m", "hodei_api", env=env,
                                               stderr=asyncio.subprocess.DEVNULL)
    relay = await asyncio.create_subprocess_exec(sys.executable, "-m", "hodei_common.relay",
                                                 env=env, stderr=asyncio.subprocess.DEVNULL)
    try:
        client = ApiClient(nc, timeout_s=5.0)

        async def api_up() -> bool:
            try:
                await nc.request(f"$SRV.PING.{subjects.API_SERVICE_NAME}", b"", timeout=0.5)
            except Exception:
                return False
            return True

        await assert_eventually(api_up, within_s=30.0)
        reply = await nc.request(
            subjects.api_ns(DEFAULT_NAMESPACE, subjects.JOBS_SUBMIT),
            b'{"command": "echo traced"}', timeout=5.0,
            headers={"traceparent": CALLER},
        )
        assert not (reply.headers or {}).get("Nats-Service-Error-Code")
        job = (await client.list_jobs())[0]

        async def published() -> bool:
            info = await js.stream_info(subjects.JOB_EVENTS_STREAM)
            return info.state.messages >= 1

        await assert_eventually(published, within_s=10.0)
        msg = await js.get_msg(subjects.JOB_EVENTS_STREAM, 1)
        assert msg.headers is not None
        assert msg.headers[subjects.HEADER_TRACEPARENT].split("-")[1] == TRACE_ID
        assert msg.headers[subjects.HEADER_MSG_ID]

        submit = f"api {subjects.api_any(subjects.JOBS_SUBMIT)}"

        def exported() -> bool:
            return any(s.service == "hodei-api" and s.name == submit and s.trace_id == TRACE_ID
                       for s in receiver.spans)

        await assert_eventually(exported, within_s=10.0, message=f"spans: {receiver.spans}")
        events = await client.events(job.id)
        assert events[0].trace_id == TRACE_ID
        assert events[0].correlation_id == str(job.id)
    finally:
        for proc in (api, relay):
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(api.wait(), 20) == 0
        assert await asyncio.wait_for(relay.wait(), 20) == 0
