"""The transition tables: every way a job or a worker changes, its fence and its events.

A lifecycle function names its transition; the table gives the states its statement
expects (``from_states``: the fence), the state it sets (``to_state``; None: the state
stays, another column changes) and the events it records, each on its subject (a job
event's names its job, ``job.<id>.<event>``: the table holds the event's name). The
statements take those states as parameters, so the table is what they enforce. A transition
that is not in its table does not exist: asking for it raises :class:`UnknownTransition`.

``python -m hodei_common.lifecycle.transitions`` prints the tables as docs/architecture.md
shows them (a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hodei_common.contracts import subjects
from hodei_common.contracts.events import Event
from hodei_common.contracts.jobs import (
    TERMINAL_JOB_STATES,
    JobAccepted,
    JobAssigned,
    JobCancelled,
    JobCancelRequested,
    JobCreated,
    JobEvent,
    JobFailed,
    JobRequeued,
    JobStarted,
    JobState,
    JobSucceeded,
    JobTimedOut,
    StaleReportRefused,
)
from hodei_common.contracts.workers import (
    ProviderUpdated,
    ProvisionFailed,
    ProvisionRequested,
    WorkerCreated,
    WorkerFailed,
    WorkerHeartbeatMissed,
    WorkerReady,
    WorkerRegistered,
    WorkerState,
    WorkerStopOrdered,
    WorkerTerminated,
    WorkerTerminating,
)
from hodei_common.errors import HodeiError


class UnknownTransition(HodeiError):
    """A transition that its aggregate's table does not have."""


@dataclass(frozen=True)
class Transition:
    """One way an aggregate changes: from any of ``from_states`` (none: the row is new) to
    ``to_state`` (None: the state stays), recording ``events`` (type, subject; for a job
    event, the event's name in its job's subject) in order; ``doc`` says who makes it and
    what else it changes."""

    aggregate: str
    name: str
    from_states: tuple[str, ...]
    to_state: str | None
    events: tuple[tuple[type[Event], str], ...] = ()
    doc: str = ""

    def subject(self, event: Event) -> str:
        """The subject ``event`` is published on; an event this transition does not record
        is refused."""
        for kind, subject in self.events:
            if type(event) is kind:
                return _subject(subject, event)
        raise UnknownTransition(f"{self.aggregate} transition {self.name!r} does not record "
                                f"{type(event).__name__}")

    @property
    def event(self) -> type[Event]:
        """The event that says it happened: the last it records (the others, before it,
        say what it implies: a job that ends was accepted and started)."""
        if not self.events:
            raise UnknownTransition(f"{self.aggregate} transition {self.name!r} records no event")
        return self.events[-1][0]

    @property
    def target(self) -> str:
        """The state it sets; only for a transition that sets one."""
        if self.to_state is None:
            raise UnknownTransition(f"{self.aggregate} transition {self.name!r} keeps the state")
        return self.to_state

    @property
    def fence(self) -> list[str]:
        """The expected states, as the statements' ``:from_states`` parameter."""
        return list(self.from_states)


class TransitionTable:
    """The transitions of one aggregate, by name."""

    def __init__(self, aggregate: str, states: Iterable[str],
                 transitions: Iterable[Transition]) -> None:
        self.aggregate = aggregate
        self.states = tuple(states)
        self._by_name: dict[str, Transition] = {}
        for t in transitions:
            unknown = {*t.from_states, t.to_state} - {*self.states, None}
            if t.aggregate != aggregate or t.name in self._by_name or unknown:
                raise ValueError(f"bad {aggregate} transition {t.name!r}: {unknown or t}")
            self._by_name[t.name] = t

    def __getitem__(self, name: str) -> Transition:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownTransition(
                f"{self.aggregate} has no transition {name!r} (it has: "
                f"{', '.join(self._by_name)})") from None

    def __iter__(self) -> Iterator[Transition]:
        return iter(self._by_name.values())

    def between(self, from_state: str | None, to_state: str) -> list[Transition]:
        """The transitions that move a row from ``from_state`` (None: a new row) to
        ``to_state``; raises when there is none."""
        found = [t for t in self if t.to_state == to_state
                 and (from_state in t.from_states if from_state else not t.from_states)]
        if not found:
            raise UnknownTransition(f"{self.aggregate} cannot go from {from_state or '(new)'} "
                                    f"to {to_state}")
        return found

    def markdown(self) -> str:
        """The table as docs/architecture.md shows it."""
        lines = [f"| {self.aggregate} transition | from | to | by, and what else changes | "
                 "events (subject) |", "|---|---|---|---|---|"]
        for t in self:
            events = ", ".join(f"`{kind.__name__}` (`{_shown(kind, subject)}`)"
                               for kind, subject in t.events)
            lines.append(f"| `{t.name}` | {' '.join(t.from_states) or '(new)'} | "
                         f"{t.to_state or '(same)'} | {t.doc} | {events or '-'} |")
        return "\n".join(lines)


def _subject(subject: str, event: Event) -> str:
    """The subject of ``event``: a job event's names the event's own job."""
    if isinstance(event, JobEvent):
        return subjects.job_event(event.job_id, subject)
    return subject


def _shown(kind: type[Event], subject: str) -> str:
    """A transition's subject as the docs show it (``job.<job>.created``)."""
    return subjects.job_event("<job>", subject) if issubclass(kind, JobEvent) else subject


def _job(name: str, from_states: Iterable[str], to_state: str | None,
         *events: tuple[type[Event], str], doc: str) -> Transition:
    return Transition("job", name, tuple(from_states), to_state, events, doc)


def _worker(name: str, from_states: Iterable[str], to_state: str | None,
            *events: tuple[type[Event], str], doc: str) -> Transition:
    return Transition("worker", name, tuple(from_states), to_state, events, doc)


_Q, _A, _R = JobState.QUEUED, JobState.ASSIGNED, JobState.RUNNING
_HELD = (_A, _R)
_TERMINAL = tuple(s for s in JobState if s in TERMINAL_JOB_STATES)

_ENDED = (JobAccepted, subjects.JOB_ACCEPTED), (JobStarted, subjects.JOB_STARTED)

JOBS = TransitionTable("job", JobState, [
    _job("submit", (), _Q, (JobCreated, subjects.JOB_CREATED),
         doc="api; with `assign` at once when a worker is idle"),
    _job("cancel_queued", (_Q,), JobState.CANCELLED, (JobCancelled, subjects.JOB_CANCELLED),
         doc="api: cancel of a queued job"),
    _job("request_cancel", _HELD, None, (JobCancelRequested, subjects.JOB_CANCEL_REQUESTED),
         doc="api: cancel of a held job; `cancel_requested_at`"),
    _job("assign", (_Q,), _A, (JobAssigned, subjects.JOB_ASSIGNED),
         doc="dispatch pass, a batch (or the api's `submit`); `worker_id`; with worker "
             "`occupy`; opens the execution saga"),
    _job("accept", (_A,), None, (JobAccepted, subjects.JOB_ACCEPTED),
         doc="`accepted` report; `accepted_at`"),
    _job("start", (_A,), _R, (JobAccepted, subjects.JOB_ACCEPTED),
         (JobStarted, subjects.JOB_STARTED),
         doc="`started` report (accepted too, when that was not said)"),
    _job("succeed", _HELD, JobState.SUCCEEDED, *_ENDED,
         (JobSucceeded, subjects.JOB_SUCCEEDED),
         doc="`finished` report; with worker `free` or `retire`"),
    _job("fail", _HELD, JobState.FAILED, *_ENDED, (JobFailed, subjects.JOB_FAILED),
         doc="`finished` report, or its worker lost (attempts used up, OOM)"),
    _job("time_out", _HELD, JobState.TIMED_OUT, *_ENDED, (JobTimedOut, subjects.JOB_TIMED_OUT),
         doc="`finished` report, or its worker lost past the job's timeout"),
    _job("cancel", _HELD, JobState.CANCELLED, *_ENDED, (JobCancelled, subjects.JOB_CANCELLED),
         doc="`finished` report, or its worker lost with a cancel asked for"),
    _job("abandon", (_A,), JobState.CANCELLED, (JobCancelled, subjects.JOB_CANCELLED),
         doc="`hodei dev up` stopping: an assignment no report says was taken; with worker "
             "`retire`"),
    _job("fail_unstartable", (_Q,), JobState.FAILED, (JobFailed, subjects.JOB_FAILED),
         doc="provisioner: the worker made for it can never start, nor could another "
             "(image not found, unschedulable); with worker `cannot_start`"),
    _job("requeue", _HELD, _Q, (JobRequeued, subjects.JOB_REQUEUED),
         doc="its worker lost, attempts left: `attempt + 1`, `not_before`"),
    _job("refuse_stale_report", tuple(JobState), None,
         (StaleReportRefused, subjects.JOB_STALE_REPORT),
         doc="scheduler: a report of an attempt the job moved past (once)"),
    _job("mark_log_truncated", _TERMINAL, None,
         doc="logs service, with the archive row: `log_truncated`"),
])

_C, _RD, _B = WorkerState.CREATING, WorkerState.READY, WorkerState.BUSY
_LIVE = (_C, _RD, _B)
_GONE = (WorkerState.FAILED, WorkerState.TERMINATED)

WORKERS = TransitionTable("worker", WorkerState, [
    _worker("request", (), _C, (ProvisionRequested, subjects.PROVISION_REQUESTED),
            doc="dispatch pass; opens the provisioning saga"),
    _worker("begin_create", (_C,), None, doc="provisioner, before `provider.create`"),
    _worker("record_resource", _LIVE, None, (WorkerCreated, subjects.WORKER_CREATED),
            doc="provisioner: `provider_resource_id`"),
    _worker("note_status", _LIVE, None,
            doc="provisioner: its provider's word on the resource (pod Pending: "
                "ContainerCreating); `resource_status`, when it changed"),
    _worker("extend_credentials", (_RD, _B), None,
            doc="provisioner, minting its agent's NATS JWT (register, renew): "
                "`nats_jwt_expires_at`, never earlier; refused once it is not live"),
    _worker("fail_create", (_C,), WorkerState.FAILED,
            (ProvisionFailed, subjects.PROVISION_FAILED), doc="provisioner: create failed"),
    _worker("cannot_start", (_C,), WorkerState.FAILED, (WorkerFailed, subjects.WORKER_FAILED),
            doc="provisioner: its provider says it can never start; the job it was made for "
                "ends (`fail_unstartable`)"),
    _worker("register", (_C,), _RD, (WorkerRegistered, subjects.WORKER_REGISTERED),
            (WorkerReady, subjects.WORKER_READY),
            doc="provisioner: the agent's token spent (same transaction)"),
    _worker("occupy", (_RD,), _B, doc="with job `assign`: `current_job_id`"),
    _worker("free", (_B,), _RD, (WorkerReady, subjects.WORKER_READY),
            doc="with the job's end: reusable, jobs left, agent stays"),
    _worker("retire", (_B,), WorkerState.TERMINATING,
            (WorkerTerminating, subjects.WORKER_TERMINATING),
            doc="with the job's end (ephemeral, used up, leaving, its job cancelled) or "
                "its job `abandon`ed"),
    _worker("retire_idle", (_RD,), WorkerState.TERMINATING,
            (WorkerTerminating, subjects.WORKER_TERMINATING),
            doc="dispatch pass: idle past `idle_ttl_s`"),
    _worker("wind_down", (_C, _RD), WorkerState.TERMINATING,
            (WorkerTerminating, subjects.WORKER_TERMINATING), doc="`hodei dev up` stopping"),
    _worker("terminate", (WorkerState.TERMINATING,), WorkerState.TERMINATED,
            (WorkerTerminated, subjects.WORKER_TERMINATED),
            doc="provisioner, its resource destroyed"),
    _worker("lose", _LIVE, WorkerState.FAILED,
            (WorkerHeartbeatMissed, subjects.WORKER_HEARTBEAT_MISSED),
            (WorkerFailed, subjects.WORKER_FAILED),
            doc="supervisor or provisioner (`Recovery.lose`); settles its job: `requeue`, "
                "`cancel`, `fail` or `time_out`; opens the recovery saga"),
    _worker("release_failed", (WorkerState.FAILED,), None,
            doc="provisioner, its resource destroyed: `terminated_at`"),
    _worker("beat", tuple(WorkerState), None, doc="supervisor, a batch: `last_heartbeat`"),
    _worker("order_stop", _GONE, None, (WorkerStopOrdered, subjects.WORKER_STOP_ORDERED),
            doc="supervisor: it beat again; `stop_ordered_at`, once"),
])

# A provider's configuration has no states: it changes, and says so.
PROVIDERS = TransitionTable("provider", (), [
    Transition("provider", "update", (), None, ((ProviderUpdated, subjects.PROVIDER_UPDATED),),
               "api: `hodei provider set`"),
])


def markdown() -> str:
    """Both tables, as docs/architecture.md shows them."""
    return f"{JOBS.markdown()}\n\n{WORKERS.markdown()}\n"


if __name__ == "__main__":
    print(markdown(), end="")
