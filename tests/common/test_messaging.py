"""JetStream topology is declared idempotently, so every replica can declare it at start."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from hodei_common import messaging
from hodei_common.contracts import subjects

pytestmark = pytest.mark.nats


async def test_streams_are_declared_once_and_updated_in_place(js: JetStreamContext) -> None:
    await messaging.ensure_streams(js)
    await messaging.ensure_streams(js)
    names = {s.config.name for s in await js.streams_info()}
    assert names == {subjects.JOB_EVENTS_STREAM, subjects.WORKER_EVENTS_STREAM,
                     subjects.WORKER_STATUS_STREAM, subjects.WORKER_ASSIGN_STREAM,
                     subjects.LOGS_STREAM}
    await messaging.ensure_streams(js, messaging.stream_configs(logs_max_age_s=3600))
    info = await js.stream_info(subjects.LOGS_STREAM)
    assert info.config.max_age == 3600
    assert info.config.duplicate_window == messaging.DUPLICATE_WINDOW_S


async def test_consumers_are_declared_once_and_updated_in_place(js: JetStreamContext) -> None:
    created = subjects.job_events(subjects.JOB_CREATED)
    config = ConsumerConfig(durable_name="probe", filter_subject=created,
                            ack_policy=AckPolicy.EXPLICIT, max_deliver=5)
    await messaging.ensure_consumer(js, subjects.JOB_EVENTS_STREAM, config)
    await messaging.ensure_consumer(js, subjects.JOB_EVENTS_STREAM, config)
    changed = ConsumerConfig(durable_name="probe", filter_subject=created,
                             ack_policy=AckPolicy.EXPLICIT, max_deliver=9)
    await messaging.ensure_consumer(js, subjects.JOB_EVENTS_STREAM, changed)
    consumers = await js.consumers_info(subjects.JOB_EVENTS_STREAM)
    assert [c.name for c in consumers] == ["probe"]
    assert consumers[0].config.max_deliver == 9

