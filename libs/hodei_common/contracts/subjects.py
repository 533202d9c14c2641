"""Every NATS subject, stream, consumer and service name used by Hodei.

No subject string is spelled anywhere else: producers and consumers import these.
Templated subjects are small functions so that permission lists stay plain
(`worker.<id>.>`, `logs.<ns>.<job>.<writer>`).
"""

from __future__ import annotations

from uuid import UUID

from hodei_common.contracts.namespaces import check_namespace

# --- request/reply: the API micro service -------------------------------------------------
# A caller's job endpoints are under its namespace (``hodei.api.<namespace>.jobs.get``): NATS
# permissions let a user publish to its own namespace's subjects only, and the API takes the
# namespace from the subject a request came on. What spans namespaces (workers, providers)
# is under ``hodei.admin``, for admins alone.
API_SERVICE_NAME = "hodei-api"
API_PREFIX = "hodei.api"
ADMIN_PREFIX = "hodei.admin"
API_QUEUE_GROUP = "hodei-api"
_NAMESPACE_TOKEN = API_PREFIX.count(".") + 1

JOBS_SUBMIT = "jobs.submit"
JOBS_GET = "jobs.get"
JOBS_LIST = "jobs.list"
JOBS_CANCEL = "jobs.cancel"
JOBS_EVENTS = "jobs.events"
JOBS_EXPLAIN = "jobs.explain"

ADMIN_WORKERS_LIST = f"{ADMIN_PREFIX}.workers.list"
ADMIN_PROVIDERS_LIST = f"{ADMIN_PREFIX}.providers.list"
ADMIN_PROVIDERS_UPDATE = f"{ADMIN_PREFIX}.providers.update"

# Every namespace's API subjects, and every admin subject, as permission lists name them.
API_SUBJECTS = f"{API_PREFIX}.*.>"
ADMIN_SUBJECTS = f"{ADMIN_PREFIX}.>"


def api_ns(namespace: str, endpoint: str) -> str:
    """Subject of one job endpoint in one namespace, e.g. ``api_ns("team-a", JOBS_GET)``."""
    return f"{API_PREFIX}.{check_namespace(namespace)}.{endpoint}"


def api_any(endpoint: str) -> str:
    """The subject the API subscribes to for one job endpoint, in every namespace."""
    return f"{API_PREFIX}.*.{endpoint}"


def namespace_of(subject: str) -> str:
    """The namespace of a request received on an :func:`api_any` subject; a token that is
    no namespace is a :class:`~hodei_common.errors.ValidationError`."""
    return check_namespace(subject.split(".")[_NAMESPACE_TOKEN])


def service_name(service: str) -> str:
    """Name under which a Hodei service answers ``$SRV.PING/INFO/STATS``."""
    return f"hodei-{service}"


# --- JetStream: job events ---------------------------------------------------------------
# A job event's subject names its job and then the event: ``job.<job id>.<event>``, so that
# ``job.<id>.>`` follows one job and ``job.*.succeeded`` every success. The names below are
# the events' (the subject's last token); :func:`job_event` makes a subject of one.
JOB_EVENTS_STREAM = "JOB_EVENTS"
JOB_EVENTS_SUBJECTS = "job.*.*"
# Every job event as a permission list names it: also lets a watcher subscribe to one job's
# (``job.<id>.>``), which ``job.*.*`` would not contain.
JOB_EVENTS_ANY = "job.>"

JOB_CREATED = "created"
JOB_ASSIGNED = "assigned"
JOB_ACCEPTED = "accepted"
JOB_STARTED = "started"
JOB_SUCCEEDED = "succeeded"
JOB_FAILED = "failed"
JOB_CANCELLED = "cancelled"
JOB_CANCEL_REQUESTED = "cancel_requested"
JOB_TIMED_OUT = "timed_out"
JOB_REQUEUED = "requeued"
JOB_STALE_REPORT = "stale_report"


def job_event(job_id: UUID | str, event: str) -> str:
    """Subject of one event (``JOB_CREATED``, ...) of one job: ``job.<id>.created``."""
    return f"job.{job_id}.{event}"


def job_events(event: str) -> str:
    """One event of every job, as consumers filter them: ``job.*.created``."""
    return job_event("*", event)


def job_of_event(subject: str) -> str:
    """The job id an event's subject names (``job.<id>.created`` -> ``<id>``)."""
    return subject.split(".", 2)[1]


def job_events_of(job_id: UUID | str) -> str:
    """Every event of one job, as a watcher subscribes: ``job.<id>.>``."""
    return f"job.{job_id}.>"


# --- JetStream: worker events ------------------------------------------------------------
WORKER_EVENTS_STREAM = "WORKER_EVENTS"
WORKER_EVENTS_SUBJECTS = ["worker.registered", "worker.ready", "worker.terminating",
                          "worker.terminated", "worker.failed", "worker.created", "provision.*",
                          "provider.updated", "worker.heartbeat_missed", "worker.stop_ordered"]

WORKER_CREATED = "worker.created"
WORKER_REGISTERED = "worker.registered"
WORKER_READY = "worker.ready"
WORKER_TERMINATED = "worker.terminated"
WORKER_TERMINATING = "worker.terminating"
WORKER_FAILED = "worker.failed"
WORKER_HEARTBEAT_MISSED = "worker.heartbeat_missed"
WORKER_STOP_ORDERED = "worker.stop_ordered"
PROVISION_REQUESTED = "provision.requested"
PROVISION_FAILED = "provision.failed"
PROVIDER_UPDATED = "provider.updated"

# --- per-worker subjects -----------------------------------------------------------------
WORKER_STATUS_STREAM = "WORKER_STATUS"
WORKER_STATUS_SUBJECTS = "worker.*.status"
WORKER_ASSIGN_STREAM = "WORKER_ASSIGN"
WORKER_ASSIGN_SUBJECTS = "worker.*.assign"
WORKER_REGISTER = "hodei.worker.register"
# Request/reply: a registered agent asks for a fresh NATS user JWT before its own expires.
# One subject per worker, so that an agent's permissions name its own alone.
WORKER_RENEW = "hodei.worker.*.renew"
# Core NATS: work may be possible now (a job was queued, a worker registered); the body is
# that job's or worker's id. A hint that saves the durable event its trip through the outbox;
# lossy by design. A pass begun after it saw the commit, so the event need not start another.
SCHEDULER_WAKE = "hodei.scheduler.wake"
WORKER_HEARTBEATS = "worker.heartbeat.*"


def worker_heartbeat(worker_id: UUID | str) -> str:
    """Core-NATS subject on which a worker's agent beats."""
    return f"worker.heartbeat.{worker_id}"


def worker_assign(worker_id: UUID | str) -> str:
    """Subject on which a worker receives its job assignments."""
    return f"worker.{worker_id}.assign"


def worker_control(worker_id: UUID | str) -> str:
    """Core-NATS subject for cancel/drain orders to one worker."""
    return f"worker.{worker_id}.control"


def worker_renew(worker_id: UUID | str) -> str:
    """Request/reply subject on which a worker's agent renews its NATS user JWT."""
    return f"hodei.worker.{worker_id}.renew"


def worker_of_renewal(subject: str) -> str:
    """The worker id token of a :func:`worker_renew` subject."""
    return subject.split(".")[2]


def worker_status(worker_id: UUID | str) -> str:
    """JetStream subject on which a worker reports accepted/started/finished."""
    return f"worker.{worker_id}.status"


# --- logs --------------------------------------------------------------------------------
# A job's log is written on ``logs.<namespace>.<job>.<writer>``: the writer is the worker
# whose agent ran an attempt (its id), or the platform (``hodei``) for the markers only the
# platform writes (which worker runs an attempt; the end of the log). NATS permissions let a
# user read its own namespace's logs only, and an agent write under its own worker id only:
# readers take an attempt's lines from the worker the platform said runs it, nobody else's.
LOGS_STREAM = "LOGS"
LOGS_SUBJECTS = "logs.*.*.*"
PLATFORM_LOG_WRITER = "hodei"
_LOG_WRITER_TOKEN = 3


def job_logs(namespace: str, job_id: UUID | str, writer: UUID | str) -> str:
    """JetStream subject of one writer's messages in one job's log."""
    return f"logs.{namespace}.{job_id}.{writer}"


def platform_logs(namespace: str, job_id: UUID | str) -> str:
    """Subject of the platform's markers in a job's log (attempt starts, the end)."""
    return job_logs(namespace, job_id, PLATFORM_LOG_WRITER)


def job_log_subjects(namespace: str, job_id: UUID | str) -> str:
    """Every writer's subject of one job's log, as a reader filters them."""
    return job_logs(namespace, job_id, "*")


def namespace_logs(namespace: str | None) -> str:
    """Every log subject of one namespace (None: of every namespace), as permission lists
    name them."""
    return f"logs.{'*' if namespace is None else check_namespace(namespace)}.>"


def worker_logs(worker_id: UUID | str) -> str:
    """Every log subject one worker may write: its own, in any job's log."""
    return job_logs("*", "*", worker_id)


def log_writer(subject: str) -> str:
    """Who wrote a message received on a :func:`job_logs` subject."""
    return subject.split(".")[_LOG_WRITER_TOKEN]


# Finished jobs' logs: a stream of the platform's own layout whose subjects name the job's
# namespace, so that NATS permissions can keep a reader to its own namespace's archives. An
# archive is its gzip'd bytes in chunks on ``archive.<namespace>.<job>.chunk.<put>`` (``put``
# new for every write of it) and, written last, its description on
# ``archive.<namespace>.<job>.meta``. Readers take the meta by a direct get and the chunks
# through a consumer created by name, both of which carry the subject in the request's own.
LOG_ARCHIVE_STREAM = "LOG_ARCHIVE"
LOG_ARCHIVE_PREFIX = "archive"
LOG_ARCHIVE_SUBJECTS = f"{LOG_ARCHIVE_PREFIX}.>"


def log_archive_meta(namespace: str, job_id: UUID | str) -> str:
    """Subject of the description of one job's archive (its last message is the current)."""
    return f"{LOG_ARCHIVE_PREFIX}.{check_namespace(namespace)}.{job_id}.meta"


def log_archive_chunks(namespace: str, job_id: UUID | str, put: str) -> str:
    """Subject of the chunks of one write (``put``) of one job's archive."""
    return f"{LOG_ARCHIVE_PREFIX}.{check_namespace(namespace)}.{job_id}.chunk.{put}"


def log_archive_job(namespace: str, job_id: UUID | str) -> str:
    """Every subject of one job's archive, as a purge filters them."""
    return f"{LOG_ARCHIVE_PREFIX}.{check_namespace(namespace)}.{job_id}.>"


def log_archive_namespace(namespace: str | None) -> str:
    """Every archive subject of one namespace (None: of every namespace), as permission
    lists name them."""
    token = "*" if namespace is None else check_namespace(namespace)
    return f"{LOG_ARCHIVE_PREFIX}.{token}.>"


# --- durable consumers (shared by every replica of their service) ----------------------------
SCHEDULER_DISPATCH_CONSUMER = "scheduler-dispatch"
SCHEDULER_STATUS_CONSUMER = "scheduler-status"
SCHEDULER_CANCEL_CONSUMER = "scheduler-cancel"
PROVISIONER_REQUESTS_CONSUMER = "provisioner-requests"
PROVISIONER_RELEASE_CONSUMER = "provisioner-release"
LOGS_ARCHIVE_CONSUMER = "logs-archive"

# --- headers -----------------------------------------------------------------------------
HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_EVENT_TYPE = "Hodei-Event-Type"
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"
# What NATS puts on a direct get's replies: the message's own subject, and on the status
# that ends a batch, how many more match and the last sequence sent.
HEADER_STATUS = "Status"
HEADER_DESCRIPTION = "Description"
HEADER_SUBJECT = "Nats-Subject"
HEADER_NUM_PENDING = "Nats-Num-Pending"
HEADER_LAST_SEQUENCE = "Nats-Last-Sequence"

PROVISIONER_SERVICE = "provisioner"
PROVISIONER_QUEUE_GROUP = "hodei-provisioner"


def msg_id(*parts: object) -> str:
    """A ``Nats-Msg-Id`` from its parts (``job:attempt:kind``), stable across retries."""
    return ":".join(str(p) for p in parts)


# --- protocol subjects, as permission lists name them ---------------------------------------
# The JetStream API (`$JS.API.<verb>`), message acks and flow control, the micro services'
# discovery verbs, and reply inboxes: spelled here so that no permission list spells them.
JS_API_PREFIX = "$JS.API"
JS_ACK_PREFIX = "$JS.ACK"
JS_FLOW_CONTROL_PREFIX = "$JS.FC"
SRV_PREFIX = "$SRV"
SRV_VERBS = ("PING", "INFO", "STATS")
INBOX_ROOT = "_INBOX"


def js_api(*tokens: str) -> str:
    """A JetStream API subject, e.g. ``js_api("STREAM.INFO", "LOGS")``."""
    return ".".join((JS_API_PREFIX, *tokens))


def js_acks(stream: str, consumer: str) -> str:
    """Every ack subject of one consumer's messages (ack, nak, term, in progress)."""
    return f"{JS_ACK_PREFIX}.{stream}.{consumer}.>"


def js_flow_control(stream: str) -> str:
    """The flow-control replies of push consumers on one stream."""
    return f"{JS_FLOW_CONTROL_PREFIX}.{stream}.>"


def srv_control(verb: str, name: str | None = None) -> str:
    """A micro discovery subject: ``$SRV.PING``, ``$SRV.PING.<name>``."""
    return f"{SRV_PREFIX}.{verb}" if name is None else f"{SRV_PREFIX}.{verb}.{name}"


# The full account resolver's update request (system account only): the body is an account
# JWT signed by the operator, the reply says whether the server stored it.
CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
REVOKER_IDENTITY = "hodei-revoker"


def claims_lookup(account: str) -> str:
    """The request for the JWT the servers hold for one account (system account only)."""
    return f"$SYS.REQ.ACCOUNT.{account}.CLAIMS.LOOKUP"


def inbox_prefix(identity: str) -> str:
    """The reply-inbox prefix of one NATS user (nats-py's ``inbox_prefix=``), so that its
    replies can be allowed to it alone: ``_INBOX.<identity>``."""
    return f"{INBOX_ROOT}.{identity}"


def user_identity(namespace: str, name: str) -> str:
    """The NATS user name (and inbox tokens) of an API user: ``u.<namespace>.<name>``, both
    DNS labels, so that no two users share an inbox."""
    return f"u.{check_namespace(namespace)}.{check_namespace(name, 'user name')}"


def agent_identity(worker_id: UUID | str) -> str:
    """The NATS user name (and inbox token) of one worker's agent."""
    return f"hodei-agent-{worker_id}"


# --- Postgres notification channels ----------------------------------------------------
OUTBOX_NOTIFY_CHANNEL = "hodei_outbox"
