"""The example messages of docs/debugging.md, made from the contracts the platform encodes.

``python -m hodei_cli.examples`` prints the page's examples as ``hodei debug sub`` prints
the messages (a test keeps the page equal to it), so a field added to a contract shows on
the page as the platform sends it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec

from hodei_cli import natsview
from hodei_common.contracts import agent, api, jobs, logs, workers
from hodei_common.contracts import subjects as s
from hodei_common.contracts.events import Event
from hodei_common.logarchive import Archived

JOB = UUID("5f0c8a2e-3b1d-4c7a-9e26-8d4f1a7b3c90")
WORKER = UUID("c41e7d3a-92b8-4f06-a1d5-6e0b8f2c9a47")
OTHER_WORKER = UUID("0a7d5e91-6c24-4b3f-8e1a-f39c2d84b615")
NS = "default"
AT = datetime(2026, 1, 15, 9, 30, 12, 345000, tzinfo=UTC)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BEGIN, END = "<!-- examples:begin -->", "<!-- examples:end -->"


@dataclass(frozen=True)
class Example:
    """One message as it travels: subject, headers, payload, and what it says."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    note: str = ""

    def rendered(self) -> str:
        text = natsview.block(1, self.subject, self.headers, self.payload).rstrip("\n")
        note = f"{self.note}\n\n" if self.note else ""
        return f"{note}```\n{text}\n```\n"


def traced(msg_id: str | None = None) -> dict[str, str]:
    headers = {} if msg_id is None else {s.HEADER_MSG_ID: msg_id}
    return {**headers, s.HEADER_TRACEPARENT: TRACEPARENT}


def event(subject: str, value: Event) -> Example:
    """A domain event as the relay publishes it from the outbox."""
    headers = {s.HEADER_TRACEPARENT: TRACEPARENT, s.HEADER_MSG_ID: str(value.event_id),
               s.HEADER_EVENT_TYPE: type(value).__name__}
    return Example(subject, msgspec.json.encode(value), headers)


def job_event(name: str, value: jobs.JobEvent) -> Example:
    """A job event as the relay publishes it, on its job's subject (``job.<id>.<name>``)."""
    return event(s.job_event(value.job_id, name), value)


def _event_ids() -> Iterator[UUID]:
    n = 0
    while True:
        n += 1
        yield UUID(f"e0000000-0000-4000-8000-{n:012d}")


def job_events() -> list[Example]:
    ids = _event_ids()

    def common(attempt: int = 1) -> dict[str, Any]:
        return {"event_id": next(ids), "occurred_at": AT, "correlation_id": str(JOB),
                "actor": "scheduler", "job_id": JOB, "attempt": attempt}

    api_side = {**common(), "actor": "api"}
    return [
        job_event(s.JOB_CREATED, jobs.JobCreated(
            **api_side, namespace=NS, name="build", provider="local", priority=0,
            timeout_s=3600.0, env_keys=["API_TOKEN"])),
        job_event(s.JOB_ASSIGNED, jobs.JobAssigned(**common(), worker_id=WORKER)),
        job_event(s.JOB_ACCEPTED, jobs.JobAccepted(**common(), worker_id=WORKER)),
        job_event(s.JOB_STARTED, jobs.JobStarted(**common(), worker_id=WORKER)),
        job_event(s.JOB_SUCCEEDED, jobs.JobSucceeded(
            **common(), state=jobs.JobState.SUCCEEDED, exit_code=0, worker_id=WORKER,
            duration_s=1.52)),
        job_event(s.JOB_FAILED, jobs.JobFailed(
            **common(), state=jobs.JobState.FAILED, exit_code=3, error="exited with code 3",
            worker_id=WORKER, duration_s=0.41)),
        job_event(s.JOB_TIMED_OUT, jobs.JobTimedOut(
            **common(), state=jobs.JobState.TIMED_OUT, exit_code=124,
            error="timed out after 60s", worker_id=WORKER, duration_s=60.0)),
        job_event(s.JOB_CANCEL_REQUESTED, jobs.JobCancelRequested(
            **{**common(), "actor": "api"}, worker_id=WORKER)),
        job_event(s.JOB_CANCELLED, jobs.JobCancelled(**common(), reason="cancel ordered")),
        job_event(s.JOB_REQUEUED, jobs.JobRequeued(
            **{**common(2), "actor": "supervisor"}, previous_worker_id=WORKER,
            reason="worker lost: no heartbeat for 3.6s", backoff_s=0.5,
            not_before=AT + timedelta(seconds=0.5))),
        job_event(s.JOB_STALE_REPORT, jobs.StaleReportRefused(
            **common(), worker_id=WORKER, kind="finished", current_attempt=2)),
    ]


def worker_events() -> list[Example]:
    ids = _event_ids()

    def common(actor: str = "provisioner") -> dict[str, Any]:
        return {"event_id": next(ids), "occurred_at": AT, "correlation_id": str(JOB),
                "actor": actor, "worker_id": WORKER, "provider": "local"}

    mode = workers.WorkerMode.EPHEMERAL
    return [
        event(s.PROVISION_REQUESTED, workers.ProvisionRequested(
            **common("scheduler"), mode=mode, job_id=JOB)),
        event(s.WORKER_CREATED, workers.WorkerCreated(**common(), provider_resource_id="48213")),
        event(s.PROVISION_FAILED, workers.ProvisionFailed(
            **common(), error="cannot reach the Docker engine")),
        event(s.WORKER_REGISTERED, workers.WorkerRegistered(**common())),
        event(s.WORKER_READY, workers.WorkerReady(**common())),
        event(s.WORKER_TERMINATING, workers.WorkerTerminating(
            **common("scheduler"), reason="its one job finished (ephemeral)")),
        event(s.WORKER_TERMINATED, workers.WorkerTerminated(**common())),
        event(s.WORKER_HEARTBEAT_MISSED, workers.WorkerHeartbeatMissed(
            **common("supervisor"), last_heartbeat=AT - timedelta(seconds=3.6),
            silent_s=3.6)),
        event(s.WORKER_FAILED, workers.WorkerFailed(
            **common("supervisor"), error="no heartbeat for 3.6s", job_id=JOB)),
        event(s.WORKER_STOP_ORDERED, workers.WorkerStopOrdered(
            **common("supervisor"), state=workers.WorkerState.FAILED, job_id=JOB, attempt=1)),
        event(s.PROVIDER_UPDATED, workers.ProviderUpdated(
            event_id=next(ids), occurred_at=AT, actor="api", provider="local",
            changes={"max_workers": 4})),
    ]


def per_worker() -> list[Example]:
    started = agent.StatusReport(worker_id=WORKER, job_id=JOB, attempt=1,
                                 kind=agent.StatusKind.STARTED, at=AT)
    finished = agent.StatusReport(
        worker_id=WORKER, job_id=JOB, attempt=1, kind=agent.StatusKind.FINISHED,
        at=AT + timedelta(seconds=1.52), outcome=agent.Outcome.SUCCEEDED, exit_code=0,
        duration_s=1.52, log_lines=2, leaving="its one job finished (ephemeral)")
    assignment = agent.Assignment(
        job_id=JOB, attempt=1, worker_id=WORKER, namespace=NS, command="make build",
        env={"API_TOKEN": "<the value: a secret>"}, timeout_s=3600.0, assigned_at=AT,
        log_max_bytes=104857600)
    return [
        Example(s.worker_assign(WORKER), msgspec.json.encode(assignment),
                traced(s.msg_id(JOB, 1, "assign")),
                "The job's env values travel here and nowhere else: no Hodei user may "
                "subscribe to or replay it."),
        Example(s.worker_status(WORKER), msgspec.json.encode(started),
                traced(s.msg_id(JOB, 1, started.kind))),
        Example(s.worker_status(WORKER), msgspec.json.encode(finished),
                traced(s.msg_id(JOB, 1, finished.kind))),
        Example(s.worker_heartbeat(WORKER), msgspec.json.encode(agent.Heartbeat(
            worker_id=WORKER, at=AT, job_id=JOB, attempt=1)), {}),
        Example(s.worker_control(WORKER), msgspec.json.encode(agent.Control(
            action=agent.ControlAction.CANCEL, job_id=JOB, attempt=1,
            reason="cancel ordered")), {}),
    ]


def job_log() -> list[Example]:
    batch = logs.LogBatch(job_id=JOB, attempt=1, lines=[
        logs.LogLine(1, logs.LogStream.STDOUT, 1768469412.512, "compiling"),
        logs.LogLine(2, logs.LogStream.STDERR, 1768469413.864, "warning: unused import"),
    ])
    end = logs.LogEnd(job_id=JOB, attempt=1, state=jobs.JobState.SUCCEEDED, exit_code=0,
                      lines=2)
    return [
        Example(s.platform_logs(NS, JOB), msgspec.json.encode(logs.LogStart(
            job_id=JOB, attempt=1, worker_id=WORKER)), traced()),
        Example(s.job_logs(NS, JOB, WORKER), msgspec.json.encode(batch),
                traced(s.msg_id(JOB, 1, 1, WORKER))),
        Example(s.platform_logs(NS, JOB), msgspec.json.encode(end),
                traced(s.msg_id(JOB, "end"))),
        Example(s.log_archive_meta(NS, JOB), msgspec.json.encode(Archived(
            job_id=JOB, namespace=NS, put="Xq9mTbW2kS1fLz0vH4rJcA", chunks=1, size_bytes=187,
            sha256="9f2c" + "0" * 56 + "4b1e", lines=2)), {}),
    ]


def requests() -> list[Example]:
    submit = api.SubmitJob(command="make build", name="build", env={"API_TOKEN": "<secret>"})
    register = agent.RegisterRequest(worker_id=WORKER, token="<one-time bootstrap token>",
                                     hostname="build-host", pid=48213,
                                     agent_version="0.1.0",
                                     public_key="<the agent's nkey (public)>")
    return [
        Example(s.api_ns(NS, s.JOBS_SUBMIT), msgspec.json.encode(submit), traced()),
        Example(s.api_ns(NS, s.JOBS_GET), msgspec.json.encode(api.GetJob(id=JOB)), traced()),
        Example(s.WORKER_REGISTER, msgspec.json.encode(register), traced()),
        Example(s.worker_renew(WORKER), msgspec.json.encode(agent.RenewRequest()), traced()),
        Example(s.SCHEDULER_WAKE, str(JOB).encode(), {}),
    ]


SECTIONS = (
    ("Job events: stream `JOB_EVENTS`, subjects `job.<job>.<event>`", job_events),
    ("Worker events: stream `WORKER_EVENTS`", worker_events),
    ("One worker's subjects: `worker.<id>.assign` (stream `WORKER_ASSIGN`), "
     "`worker.<id>.status` (stream `WORKER_STATUS`), `worker.heartbeat.<id>` and "
     "`worker.<id>.control` (core NATS)", per_worker),
    ("A job's log: stream `LOGS`, `logs.<ns>.<job>.<writer>`; its archive: stream "
     "`LOG_ARCHIVE`, `archive.<ns>.<job>.meta`", job_log),
    ("Requests (core NATS, request/reply)", requests),
)


def render() -> str:
    """The examples part of docs/debugging.md, between its markers."""
    parts = [BEGIN, ""]
    for title, make in SECTIONS:
        parts += [f"### {title}", ""]
        parts += [example.rendered() for example in make()]
    parts.append(END)
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
