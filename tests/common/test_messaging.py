"""JetStream topology is declared idempotently, so every replica can declare it at start."""

from __future__ import annotations

from uuid import uuid4

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


# What a deployment from before job events' subjects named their job has declared.
OLD_JOB_EVENTS_SUBJECTS = ["job.*"]
OLD_JOB_CREATED = "job.created"


async def test_an_older_job_events_stream_and_durable_take_the_subjects_naming_the_job(
    js: JetStreamContext,
) -> None:
    await js.delete_stream(subjects.JOB_EVENTS_STREAM)
    await js.add_stream(name=subjects.JOB_EVENTS_STREAM, subjects=OLD_JOB_EVENTS_SUBJECTS)
    await js.publish(OLD_JOB_CREATED, b"stored before the upgrade")
    await messaging.ensure_consumer(js, subjects.JOB_EVENTS_STREAM, ConsumerConfig(
        durable_name="triggers", filter_subjects=[OLD_JOB_CREATED],
        ack_policy=AckPolicy.EXPLICIT))

    await messaging.ensure_streams(js)
    new_filter = subjects.job_events(subjects.JOB_CREATED)
    await messaging.ensure_consumer(js, subjects.JOB_EVENTS_STREAM, ConsumerConfig(
        durable_name="triggers", filter_subjects=[new_filter], ack_policy=AckPolicy.EXPLICIT))

    info = await js.stream_info(subjects.JOB_EVENTS_STREAM)
    assert info.config.subjects == [subjects.JOB_EVENTS_SUBJECTS]
    assert info.state.messages == 1  # what was stored stays
    created = subjects.job_event(uuid4(), subjects.JOB_CREATED)
    ack = await js.publish(created, b"after")
    assert ack.stream == subjects.JOB_EVENTS_STREAM
    consumer = await js.consumer_info(subjects.JOB_EVENTS_STREAM, "triggers")
    # The server keeps a lone filter in ``filter_subject``.
    assert (consumer.config.filter_subjects or [consumer.config.filter_subject]) == [new_filter]
    sub = await js.pull_subscribe_bind(durable="triggers", stream=subjects.JOB_EVENTS_STREAM)
    [msg] = await sub.fetch(1, timeout=5)
    assert (msg.subject, msg.data) == (created, b"after")
