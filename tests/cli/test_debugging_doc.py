"""docs/debugging.md stays true: its messages are the contracts' as the platform encodes
them, and it names every subject and stream."""

from __future__ import annotations

from pathlib import Path

from hodei_cli import examples
from hodei_common import messaging
from hodei_common.contracts import subjects

PAGE = Path(__file__).resolve().parents[2] / "docs" / "debugging.md"


def test_the_page_s_messages_are_the_generated_ones() -> None:
    text = PAGE.read_text()
    begin, end = text.index(examples.BEGIN), text.index(examples.END) + len(examples.END) + 1
    assert text[begin:end] == examples.render(), "run: python -m hodei_cli.examples"


def test_the_page_names_every_stream_and_event_subject_with_an_example() -> None:
    text = PAGE.read_text()
    streams = [c.name for c in messaging.stream_configs()] + [subjects.LOG_ARCHIVE_STREAM]
    for stream in streams:
        assert f"`{stream}`" in text, stream
    names = [(name, value) for name, value in vars(subjects).items() if isinstance(value, str)]
    # A job event's subject names its job: `job.<id>.created` for the event `created`.
    events = [subjects.job_event(examples.JOB, value) for name, value in names
              if name.startswith("JOB_") and value.isidentifier() and value.islower()]
    assert len(events) > 10
    events += [value for name, value in names
               if name.startswith(("WORKER_", "PROVISION_", "PROVIDER_"))
               and "." in value and "*" not in value and not value.startswith("hodei.")]
    assert len(events) > 20
    shown = {e.subject for make in (examples.job_events, examples.worker_events)
             for e in make()}
    assert set(events) == shown
    for subject in (subjects.WORKER_REGISTER, subjects.SCHEDULER_WAKE,
                    subjects.worker_status(examples.WORKER),
                    subjects.worker_assign(examples.WORKER),
                    subjects.worker_heartbeat(examples.WORKER),
                    subjects.worker_control(examples.WORKER),
                    subjects.log_archive_meta(examples.NS, examples.JOB)):
        assert f'Received on "{subject}"' in text, subject
