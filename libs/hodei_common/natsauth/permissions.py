"""What each Hodei identity may publish and subscribe to: the one place permissions live.

Every list is built from :mod:`hodei_common.contracts.subjects`, after what the code does:

- every service (``runner.HodeiService``) declares the streams (``STREAM.CREATE``/``UPDATE``),
  answers ``$SRV.PING/INFO/STATS`` as ``hodei-<name>``, and gets JetStream acks and request
  replies on an inbox of its own (``_INBOX.hodei-<name>.>``);
- a durable consumer (``consumer.consume``) is created (``CONSUMER.DURABLE.CREATE``), fetched
  (``CONSUMER.MSG.NEXT``) and acked (``$JS.ACK.<stream>.<durable>.>``) by its name only;
- a log reader (``logreader``) gets a log's newest message by a direct get and reads it through
  an ordered push consumer created by name (``CONSUMER.CREATE.<stream>.<name>.<filter>``),
  deleted after use, and an archive reader (``logarchive``) a meta and chunks the same way:
  both name the subjects read in the request's subject, so an allow list names the
  namespaces its user may read (see :func:`_confined_reader`);
- an agent is confined to its own worker's subjects (see :func:`agent`).

A connection using these must pass ``inbox_prefix=permissions.inbox_prefix`` to nats-py, and a
service answers requests through ``respond`` (nats ``resp``: one reply per request received).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from uuid import UUID

from hodei_common.contracts import subjects as s
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE

CLI_IDENTITY = "hodei-cli"
# JWT tags naming a user's namespace and whether it is an admin: the CLI reads them to know
# where it acts (the server enforces the subjects, not the tags).
NAMESPACE_TAG = "hodei-namespace:"
ADMIN_TAG = "hodei-admin"


@dataclass(frozen=True)
class Scope:
    """Where a user acts: its namespace, and whether it may act in every one."""

    namespace: str
    admin: bool

    @classmethod
    def of_tags(cls, tags: list[str]) -> Scope | None:
        """The scope the tags of a user JWT name; None when they name none (a service)."""
        namespace = next((t.removeprefix(NAMESPACE_TAG) for t in tags
                          if t.startswith(NAMESPACE_TAG)), None)
        return None if namespace is None else cls(namespace, ADMIN_TAG in tags)

    @property
    def tags(self) -> tuple[str, ...]:
        return (f"{NAMESPACE_TAG}{self.namespace}", *((ADMIN_TAG,) if self.admin else ()))


class Role(enum.StrEnum):
    """A kind of Hodei NATS user; each service replica of one kind shares its permissions."""

    API = "api"
    RELAY = "relay"
    SCHEDULER = "scheduler"
    PROVISIONER = "provisioner"
    LOGS = "logs"
    SUPERVISOR = "supervisor"
    CLI = "cli"


@dataclass(frozen=True)
class Permissions:
    """Allow lists (nothing else is allowed) and the inbox prefix the client must use."""

    identity: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    respond: bool = False
    tags: tuple[str, ...] = ()  # what the user's JWT says of it (its namespace, admin)

    @property
    def inbox_prefix(self) -> str:
        return s.inbox_prefix(self.identity)


STREAMS = (s.JOB_EVENTS_STREAM, s.WORKER_EVENTS_STREAM, s.WORKER_STATUS_STREAM,
           s.WORKER_ASSIGN_STREAM, s.LOGS_STREAM)


def _declare_streams() -> list[str]:
    return [s.js_api(verb, stream) for stream in STREAMS
            for verb in ("STREAM.CREATE", "STREAM.UPDATE")]


def _durable(stream: str, durable: str) -> list[str]:
    """Create (either form nats-py may use), fetch from and ack one durable consumer."""
    return [
        s.js_api("CONSUMER.DURABLE.CREATE", stream, durable),
        s.js_api("CONSUMER.CREATE", stream, durable),
        s.js_api("CONSUMER.CREATE", stream, durable, ">"),
        s.js_api("CONSUMER.INFO", stream, durable),
        s.js_api("CONSUMER.MSG.NEXT", stream, durable),
        s.js_acks(stream, durable),
    ]


def _confined_reader(stream: str, allowed: str) -> list[str]:
    """Read the messages of ``stream`` under ``allowed`` and nothing else: one by a direct get
    whose subject ends with the message's own, and through an ordered consumer created by name
    whose subject ends with its filter (the server refuses a filter that differs from it),
    deleted after use. Neither ``STREAM.MSG.GET`` nor the unnamed ``CONSUMER.CREATE``, whose
    subjects name no filter, is allowed."""
    return [
        s.js_api("DIRECT.GET", stream, allowed),
        s.js_api("CONSUMER.CREATE", stream, "*", allowed),
        s.js_api("CONSUMER.DELETE", stream, "*"),
        s.js_flow_control(stream),
    ]


def _log_readers(namespace: str | None) -> list[str]:
    """Read the live and the archived logs of one namespace (None: of every namespace)."""
    return [*_confined_reader(s.LOGS_STREAM, s.namespace_logs(namespace)),
            *_confined_reader(s.LOG_ARCHIVE_STREAM, s.log_archive_namespace(namespace))]


# The platform's own streams an admin may replay (``hodei debug sub --stream``): their
# events and reports carry no secret. Not ``WORKER_ASSIGN``: an assignment holds the job's
# env values.
EVENT_STREAMS = (s.JOB_EVENTS_STREAM, s.WORKER_EVENTS_STREAM, s.WORKER_STATUS_STREAM)


def _event_watcher() -> tuple[list[str], list[str]]:
    """What an admin publishes and subscribes to to watch the platform's events, reports,
    heartbeats and orders live, and to replay the event streams through ordered consumers
    created by name (filtered or not), deleted after use; and their streams' info, which
    ``nats stream view`` asks for first."""
    publish = [subject for stream in EVENT_STREAMS for subject in (
        s.js_api("STREAM.INFO", stream),
        s.js_api("CONSUMER.CREATE", stream, "*"), s.js_api("CONSUMER.CREATE", stream, "*", ">"),
        s.js_api("CONSUMER.DELETE", stream, "*"), s.js_flow_control(stream))]
    subscribe = [s.JOB_EVENTS_ANY, *s.WORKER_EVENTS_SUBJECTS, s.WORKER_STATUS_SUBJECTS,
                 s.WORKER_HEARTBEATS, s.worker_control("*")]
    return publish, subscribe


def _archive_writer() -> list[str]:
    """Create the archive stream, write archives in it, replace and delete them (purges)."""
    stream = s.LOG_ARCHIVE_STREAM
    return [s.js_api("STREAM.CREATE", stream), s.js_api("STREAM.PURGE", stream),
            s.LOG_ARCHIVE_SUBJECTS]


def _micro(name: str) -> list[str]:
    return [subject for verb in s.SRV_VERBS for subject in (
        s.srv_control(verb), s.srv_control(verb, name), s.srv_control(verb, name) + ".*")]


def _service(role: Role, publish: list[str], subscribe: list[str]) -> Permissions:
    identity = s.service_name(role.value)
    return Permissions(
        identity=identity,
        publish=tuple(_declare_streams() + publish),
        subscribe=tuple([*_micro(identity), s.inbox_prefix(identity) + ".>", *subscribe]),
        # ``resp`` rather than ``_INBOX.>``: a service answers only whoever asked it, not any
        # client's inbox. The server's reply tracking costs no measurable time on a request.
        respond=True,
    )


def role(which: Role) -> Permissions:
    """The permissions of a service kind, or of the ``hodei`` CLI (an operator's tool)."""
    control = s.worker_control("*")
    if which is Role.API:
        # Assignments too: a job that finds an idle worker is sent to it by the api.
        return _service(which, [s.SCHEDULER_WAKE, s.WORKER_ASSIGN_SUBJECTS,
                                s.platform_logs("*", "*")],
                        [s.API_SUBJECTS, s.ADMIN_SUBJECTS])
    if which is Role.RELAY:
        return _service(which, [s.JOB_EVENTS_SUBJECTS, *s.WORKER_EVENTS_SUBJECTS], [])
    if which is Role.SCHEDULER:
        return _service(which, [
            s.WORKER_ASSIGN_SUBJECTS, s.platform_logs("*", "*"), control,
            *_durable(s.JOB_EVENTS_STREAM, s.SCHEDULER_DISPATCH_CONSUMER),
            *_durable(s.WORKER_EVENTS_STREAM, s.SCHEDULER_DISPATCH_CONSUMER),
            *_durable(s.WORKER_STATUS_STREAM, s.SCHEDULER_STATUS_CONSUMER),
            *_durable(s.JOB_EVENTS_STREAM, s.SCHEDULER_CANCEL_CONSUMER),
        ], [s.SCHEDULER_WAKE])
    if which is Role.PROVISIONER:
        return _service(which, [
            s.SCHEDULER_WAKE, control, s.js_api("STREAM.MSG.GET", s.WORKER_STATUS_STREAM),
            *_durable(s.WORKER_EVENTS_STREAM, s.PROVISIONER_REQUESTS_CONSUMER),
            *_durable(s.WORKER_EVENTS_STREAM, s.PROVISIONER_RELEASE_CONSUMER),
        ], [s.WORKER_REGISTER, s.WORKER_RENEW])
    if which is Role.LOGS:
        return _service(which, [
            s.platform_logs("*", "*"), *_durable(s.JOB_EVENTS_STREAM, s.LOGS_ARCHIVE_CONSUMER),
            *_log_readers(None), *_archive_writer(),
            # Reads a finished log by batched direct gets (its subject in the body): the
            # whole stream, as _log_readers(None) allows anyway.
            s.js_api("DIRECT.GET", s.LOGS_STREAM),
        ], [])
    if which is Role.SUPERVISOR:
        return _service(which, [control, s.js_api("STREAM.MSG.GET", s.WORKER_STATUS_STREAM)],
                        [s.WORKER_HEARTBEATS])
    return _cli()


def _cli() -> Permissions:
    """The ``hodei`` CLI of the embedded platform's owner: an admin of the default namespace
    that may also tell busy workers to stop (``hodei dev`` shutting down)."""
    admin = user_permissions(CLI_IDENTITY, Scope(DEFAULT_NAMESPACE, admin=True))
    return replace(admin, publish=(*admin.publish, s.worker_control("*")))


def user(name: str, namespace: str, *, admin: bool = False) -> Permissions:
    """A person or program calling the API (``hodei auth create-user``), known on NATS as
    ``u.<namespace>.<name>``."""
    return user_permissions(s.user_identity(namespace, name), Scope(namespace, admin))


def user_permissions(identity: str, scope: Scope) -> Permissions:
    """Calls its namespace's job endpoints (an admin: every namespace's, the admin endpoints
    and the services' pings), and reads logs live, from the stream, or from the archive of its
    namespace (an admin: of every namespace, and the platform's events too: they span
    namespaces)."""
    if scope.admin:
        calls = [s.API_SUBJECTS, s.ADMIN_SUBJECTS, s.SRV_PREFIX + ".>"]
        watch_publish, watch = _event_watcher()
    else:
        calls, watch_publish, watch = [s.api_ns(scope.namespace, ">")], [], []
    namespace = None if scope.admin else scope.namespace
    return Permissions(
        identity=identity,
        publish=(*calls, *_log_readers(namespace), *watch_publish),
        subscribe=(s.inbox_prefix(identity) + ".>", s.namespace_logs(namespace), *watch),
        tags=scope.tags,
    )


def agent(worker_id: UUID | str, job: tuple[str, UUID | str] | None = None) -> Permissions:
    """One registered worker's agent: its own status and heartbeat, its lines in the log of
    its job (``job``: namespace and id), or in any job's when None (a reusable worker runs jobs
    not known when its credentials are made: readers take an attempt's lines from the worker
    the platform gave it to only), its control orders, and its assignments through a consumer
    whose filter is its own assign subject (the named ``CONSUMER.CREATE`` form, which puts the
    filter in the subject so that permissions can pin it)."""
    identity = s.agent_identity(worker_id)
    return Permissions(
        identity=identity,
        publish=(
            s.worker_status(worker_id),
            s.worker_heartbeat(worker_id),
            s.job_logs(*job, worker_id) if job is not None else s.worker_logs(worker_id),
            s.js_api("CONSUMER.CREATE", s.WORKER_ASSIGN_STREAM, "*",
                     s.worker_assign(worker_id)),
            s.js_flow_control(s.WORKER_ASSIGN_STREAM),
            s.worker_renew(worker_id),
        ),
        subscribe=(s.worker_control(worker_id), s.inbox_prefix(identity) + ".>"),
    )


def bootstrap(worker_id: UUID | str) -> Permissions:
    """What a new worker's agent gets before it registers: the register request alone, and
    the reply to it on its own inbox."""
    identity = s.agent_identity(worker_id)
    return Permissions(identity=identity, publish=(s.WORKER_REGISTER,),
                       subscribe=(s.inbox_prefix(identity) + ".>",))


def revoker() -> Permissions:
    """The system-account user that reads the platform account's JWT from the servers and
    pushes it anew (its revocations), and reads their replies."""
    identity = s.REVOKER_IDENTITY
    return Permissions(identity=identity, publish=(s.CLAIMS_UPDATE, s.claims_lookup("*")),
                       subscribe=(s.inbox_prefix(identity) + ".>",))


def everything(identity: str) -> Permissions:
    """Every subject: for a test's own observer, never for a part of the platform."""
    return Permissions(identity=identity, publish=(">",), subscribe=(">",), respond=True)
