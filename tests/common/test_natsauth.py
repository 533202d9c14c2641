"""NATS decentralized auth: a server in operator mode lets in only the platform's users, each
allowed exactly its role's subjects."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from uuid import UUID, uuid4

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.micro import add_service
from nats.micro.request import Request

from hodei_common import logarchive, messaging
from hodei_common.consumer import ConsumerSpec
from hodei_common.contracts import subjects
from hodei_common.contracts.jobs import JobState
from hodei_common.contracts.logs import LogBatch, LogEnd, LogLine, LogStart, LogStream
from hodei_common.contracts.namespaces import DEFAULT_NAMESPACE
from hodei_common.embedded import NatsServer
from hodei_common.errors import ConfigError
from hodei_common.logreader import read_log
from hodei_common.natsauth import KeyKind, NKey, Trust, UserCredentials, jwt, permissions
from hodei_common.natsauth.permissions import Role
from hodei_common.settings import Settings
from hodei_common.testing import assert_eventually

VIOLATION = "permissions violation"  # how nats-py words the server's -ERR to error_cb
JS_TIMEOUT_S = 1.0  # a refused JetStream API request is never answered
NS = DEFAULT_NAMESPACE
EVERY_LOG = "logs.>"


class Connection:
    """A client connected as one user, with the errors the server sent it."""

    def __init__(self, nc: NATS, errors: list[Exception]) -> None:
        self.nc = nc
        self.errors = errors
        self.js = nc.jetstream(timeout=JS_TIMEOUT_S)

    async def violations(self) -> list[str]:
        """The permission violations reported so far (after a round trip); nats-py gives the
        server's error in lower case, subjects included."""
        await self.nc.flush()
        await asyncio.sleep(0.05)  # the error callback runs in its own task
        return [str(e) for e in self.errors if VIOLATION in str(e)]

    async def refused(self, action: Awaitable[object], subject: str) -> None:
        """``action`` fails, and the server says the subject was not allowed."""
        with pytest.raises((NatsError, TimeoutError)):
            await action
        assert any(subject.lower() in v for v in await self.violations()), self.errors


ConnectAs = Callable[[UserCredentials], AbstractAsyncContextManager[Connection]]


async def _connect(url: str, creds_file: Path | None, inbox_prefix: str = "_INBOX",
                   errors: list[Exception] | None = None) -> NATS:
    errors = errors if errors is not None else []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    nc = NATS()
    try:
        await nc.connect(
            url, user_credentials=str(creds_file) if creds_file else None,
            inbox_prefix=inbox_prefix, error_cb=on_error, allow_reconnect=False,
            max_reconnect_attempts=0, connect_timeout=2,
        )
    except BaseException:
        await nc.close()  # a refused connect leaves its socket open otherwise
        raise
    return nc


@pytest.fixture
def connect_as(
    secured_nats_server: NatsServer, tmp_path: Path
) -> ConnectAs:
    """Connect as a minted user, through a creds file, with the user's inbox prefix."""

    @asynccontextmanager
    async def connect(user: UserCredentials) -> AsyncIterator[Connection]:
        errors: list[Exception] = []
        creds_file = user.write(tmp_path / f"{user.name}-{uuid4()}.creds")
        nc = await _connect(secured_nats_server.url, creds_file, user.inbox_prefix, errors)
        try:
            yield Connection(nc, errors)
        finally:
            await nc.close()

    return connect


# --- who gets in -----------------------------------------------------------------------------

@pytest.mark.nats
async def test_a_connection_without_credentials_is_refused(
    secured_nats_server: NatsServer,
) -> None:
    with pytest.raises(NatsError, match="Authorization Violation"):
        await _connect(secured_nats_server.url, None)


@pytest.mark.nats
async def test_a_user_signed_by_another_account_is_refused(
    secured_nats_server: NatsServer, nats_trust: Trust, tmp_path: Path
) -> None:
    stranger = nats_trust.user(permissions.role(Role.CLI), signer=NKey.create(KeyKind.ACCOUNT))
    with pytest.raises(NatsError, match="Authorization Violation"):
        await _connect(secured_nats_server.url, stranger.write(tmp_path / "stranger.creds"))


@pytest.mark.nats
async def test_an_expired_user_is_refused_and_an_unexpired_one_let_in(
    secured_nats_server: NatsServer, nats_trust: Trust, tmp_path: Path
) -> None:
    cli = permissions.role(Role.CLI)
    expired = nats_trust.user(cli, expires_at=time.time() - 5)
    with pytest.raises(NatsError, match="Authorization Violation"):
        await _connect(secured_nats_server.url, expired.write(tmp_path / "expired.creds"))
    valid = nats_trust.user(cli, expires_at=time.time() + 600)
    nc = await _connect(secured_nats_server.url, valid.write(tmp_path / "valid.creds"),
                        valid.inbox_prefix)
    await nc.close()


@pytest.mark.nats
async def test_a_creds_file_is_read_anew_at_each_connect_and_named_when_refused(
    secured_nats_server: NatsServer, nats_trust: Trust, tmp_path: Path
) -> None:
    cli = permissions.role(Role.CLI)
    path = nats_trust.user(cli).write(tmp_path / "cli.creds")
    settings = Settings(nats_url=secured_nats_server.url, creds=path, home=tmp_path)
    nc = await messaging.connect(settings, "test", initial_attempts=1)
    await nc.close()
    nats_trust.user(cli, expires_at=time.time() - 5).write(path)  # replaced on disk
    with pytest.raises(ConfigError, match=f"refused the credentials {path}: "):
        await messaging.connect(settings, "test", initial_attempts=1)


# --- what each role may do -------------------------------------------------------------------

@pytest.mark.nats
async def test_relay_and_scheduler_move_an_event_through_a_durable_consumer(
    connect_as: ConnectAs, nats_trust: Trust
) -> None:
    relay_user = nats_trust.user(permissions.role(Role.RELAY))
    scheduler_user = nats_trust.user(permissions.role(Role.SCHEDULER))
    async with connect_as(relay_user) as relay, connect_as(scheduler_user) as scheduler:
        await messaging.ensure_streams(scheduler.js)
        await messaging.ensure_streams(relay.js)  # an update in place: allowed too
        created = subjects.job_event(uuid4(), subjects.JOB_CREATED)
        ack = await relay.js.publish(created, b"{}",
                                     headers={subjects.HEADER_MSG_ID: "e1"})
        assert ack.stream == subjects.JOB_EVENTS_STREAM

        spec = ConsumerSpec(stream=subjects.JOB_EVENTS_STREAM,
                            durable=subjects.SCHEDULER_DISPATCH_CONSUMER,
                            filter_subjects=[subjects.job_events(subjects.JOB_CREATED)])
        await messaging.ensure_consumer(scheduler.js, spec.stream, spec.config())
        sub = await scheduler.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
        [msg] = await sub.fetch(1, timeout=2)
        await msg.ack_sync()
        worker = uuid4()
        ack = await scheduler.js.publish(subjects.worker_assign(worker), b"{}")
        assert ack.stream == subjects.WORKER_ASSIGN_STREAM
        assert await scheduler.violations() == []
        assert await relay.violations() == []


@pytest.mark.nats
async def test_scheduler_is_refused_what_is_not_its_work(
    connect_as: ConnectAs, nats_trust: Trust
) -> None:
    async with connect_as(nats_trust.user(permissions.role(Role.SCHEDULER))) as scheduler:
        await messaging.ensure_streams(scheduler.js)
        created = subjects.job_event(uuid4(), subjects.JOB_CREATED)
        await scheduler.nc.publish(created, b"{}")  # the relay's
        await scheduler.nc.subscribe(subjects.WORKER_HEARTBEATS)  # the supervisor's
        found = await scheduler.violations()
        assert any(f'publish to "{created}"' in v for v in found), found
        assert any(f'subscription to "{subjects.WORKER_HEARTBEATS}"' in v for v in found), found
        # Another service's durable consumer is not the scheduler's to make.
        foreign = ConsumerConfig(durable_name=subjects.PROVISIONER_REQUESTS_CONSUMER,
                                 ack_policy=AckPolicy.EXPLICIT)
        await scheduler.refused(
            scheduler.js.add_consumer(subjects.WORKER_EVENTS_STREAM, foreign),
            subjects.PROVISIONER_REQUESTS_CONSUMER)
        await scheduler.refused(scheduler.js.delete_stream(subjects.LOGS_STREAM),
                                "STREAM.DELETE")


@pytest.mark.nats
async def test_agent_takes_its_own_assignments_and_reports_only_as_itself(
    connect_as: ConnectAs, nats_trust: Trust
) -> None:
    worker, other, job = uuid4(), uuid4(), uuid4()
    async with (
        connect_as(nats_trust.user(permissions.role(Role.SCHEDULER))) as scheduler,
        connect_as(nats_trust.user(permissions.agent(worker, (NS, job)))) as agent,
    ):
        await messaging.ensure_streams(scheduler.js)
        await scheduler.js.publish(subjects.worker_assign(worker), b"mine")
        await scheduler.js.publish(subjects.worker_assign(other), b"not mine")

        # A consumer made by name carries its filter in the subject: the agent's own only.
        got: asyncio.Queue[Msg] = asyncio.Queue()
        await agent.js.subscribe(
            subjects.worker_assign(worker), stream=subjects.WORKER_ASSIGN_STREAM,
            cb=got.put, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
            config=ConsumerConfig(name=f"agent-{worker}"),
        )
        assert (await asyncio.wait_for(got.get(), 2)).data == b"mine"
        ack = await agent.js.publish(subjects.worker_status(worker), b"{}")
        assert ack.stream == subjects.WORKER_STATUS_STREAM
        await agent.js.publish(subjects.job_logs(NS, job, worker), b"{}")
        await agent.nc.publish(subjects.worker_heartbeat(worker), b"{}")
        await agent.nc.subscribe(subjects.worker_control(worker))
        assert await agent.violations() == []

        await agent.refused(agent.js.subscribe(
            subjects.worker_assign(other), stream=subjects.WORKER_ASSIGN_STREAM,
            ordered_consumer=True, config=ConsumerConfig(name=f"agent-{other}")),
            subjects.worker_assign(other))
        # The unnamed form (how the agent subscribes today) names no filter: refused.
        await agent.refused(agent.js.subscribe(
            subjects.worker_assign(worker), stream=subjects.WORKER_ASSIGN_STREAM,
            ordered_consumer=True), subjects.js_api("CONSUMER.CREATE",
                                                     subjects.WORKER_ASSIGN_STREAM) + '"')
        await agent.refused(agent.js.publish(subjects.worker_status(other), b"{}"),
                            subjects.worker_status(other))
        for subject in (subjects.job_logs(NS, uuid4(), worker), subjects.job_logs(NS, job, other),
                        subjects.platform_logs(NS, job)):
            await agent.refused(agent.js.publish(subject, b"{}"), subject)
        await agent.nc.subscribe(subjects.worker_control(other))
        await agent.nc.subscribe(subjects.WORKER_HEARTBEATS)
        found = await agent.violations()
        assert any(subjects.worker_control(other) in v for v in found), found
        assert any(subjects.WORKER_HEARTBEATS in v for v in found), found


@pytest.mark.nats
async def test_api_answers_the_cli_and_its_pings(
    connect_as: ConnectAs, nats_trust: Trust
) -> None:
    async with (
        connect_as(nats_trust.user(permissions.role(Role.API))) as api,
        connect_as(nats_trust.user(permissions.role(Role.CLI))) as cli,
    ):
        name = subjects.service_name(Role.API.value)
        micro = await add_service(api.nc, name=name, version="0.0.1")

        async def echo(req: Request) -> None:
            await req.respond(req.data)

        await micro.add_endpoint(name="jobs_get", subject=subjects.api_any(subjects.JOBS_GET),
                                 handler=echo, queue_group=subjects.API_QUEUE_GROUP)
        await micro.add_endpoint(name="workers_list", subject=subjects.ADMIN_WORKERS_LIST,
                                 handler=echo, queue_group=subjects.API_QUEUE_GROUP)
        await api.nc.flush()  # the server has the subscriptions before the requests come

        async def answered() -> Msg:
            # A full suite run once met "no responders" here all the same: asked again.
            try:
                return await cli.nc.request(
                    subjects.api_ns(DEFAULT_NAMESPACE, subjects.JOBS_GET), b"hello", timeout=2)
            except NoRespondersError as e:
                raise AssertionError("no responders yet") from e

        reply = await assert_eventually(answered, within_s=5)
        assert reply.data == b"hello"
        admin = await cli.nc.request(subjects.ADMIN_WORKERS_LIST, b"admin", timeout=2)
        assert admin.data == b"admin"
        pong = await cli.nc.request(subjects.srv_control("PING", name), b"", timeout=2)
        assert name.encode() in pong.data
        assert await api.violations() == []
        assert await cli.violations() == []
        # The API answers requests; it sends nothing of its own to another user's inbox.
        await api.nc.publish(subjects.inbox_prefix("hodei-cli") + ".x", b"")
        assert any("_inbox.hodei-cli.x" in v for v in await api.violations())
        await micro.stop()
        # It sends the assignment of a job it assigned at submit, and marks the job's log;
        # a worker's status or control orders are not its to write.
        await messaging.ensure_streams(api.js)
        worker, job = uuid4(), uuid4()
        await api.js.publish(subjects.worker_assign(worker), b"{}")
        await api.js.publish(subjects.platform_logs(DEFAULT_NAMESPACE, job), b"{}")
        api.errors.clear()
        await api.nc.publish(subjects.worker_status(worker), b"{}")
        await api.nc.publish(subjects.worker_control(worker), b"{}")
        found = await api.violations()
        assert len(found) == 2, found
        assert any(subjects.worker_status(worker) in v for v in found), found


@pytest.mark.nats
async def test_a_reusable_agent_writes_any_job_s_log_but_only_as_itself(
    connect_as: ConnectAs, nats_trust: Trust
) -> None:
    """Its jobs are not known when it registers; readers take an attempt's lines from the
    worker the platform gave it to, so writing as itself elsewhere is harmless."""
    worker, other, job = uuid4(), uuid4(), uuid4()
    async with (
        connect_as(nats_trust.user(permissions.role(Role.SCHEDULER))) as scheduler,
        connect_as(nats_trust.user(permissions.agent(worker))) as agent,
    ):
        await messaging.ensure_streams(scheduler.js)
        await agent.js.publish(subjects.job_logs("team-b", job, worker), b"{}")
        assert await agent.violations() == []
        for subject in (subjects.job_logs("team-b", job, other),
                        subjects.platform_logs("team-b", job)):
            await agent.refused(agent.js.publish(subject, b"{}"), subject)


async def _log(writer: Connection, namespace: str) -> tuple[UUID, LogBatch]:
    """A job's log of one line in ``namespace``, written as the platform and its worker do."""
    job, worker = uuid4(), uuid4()
    line = LogBatch(job_id=job, attempt=1, lines=[LogLine(1, LogStream.STDOUT, 0.0, "secret")])
    await writer.js.publish(subjects.platform_logs(namespace, job), msgspec.json.encode(
        LogStart(job_id=job, attempt=1, worker_id=worker)))
    await writer.js.publish(subjects.job_logs(namespace, job, worker), msgspec.json.encode(line))
    return job, line


@pytest.mark.nats
async def test_a_user_reads_its_namespace_s_logs_and_no_other_s(
    connect_as: ConnectAs, nats_trust: Trust
) -> None:
    async with (
        connect_as(nats_trust.user(permissions.everything("writer"))) as writer,
        connect_as(nats_trust.user(permissions.user("ann", "team-a"))) as ann,
        connect_as(nats_trust.user(permissions.user("root", "team-c", admin=True))) as admin,
    ):
        await messaging.ensure_streams(writer.js)
        mine, line = await _log(writer, "team-a")
        theirs, their_line = await _log(writer, "team-b")
        for reader in (ann, admin):
            assert [m async for m in read_log(reader.js, "team-a", mine, follow=False)] == [line]
        assert [m async for m in read_log(admin.js, "team-b", theirs, follow=False)] == [
            their_line]
        stream = subjects.LOGS_STREAM
        assert (await writer.js.stream_info(stream)).state.consumer_count == 0  # all deleted
        assert await ann.violations() == []
        assert await admin.violations() == []

        with pytest.raises((NatsError, TimeoutError)):
            await anext(read_log(ann.js, "team-b", theirs, follow=False))
        # Every other way in: a wider filter, an unnamed consumer, a plain read, a
        # subscription, a forged line.
        for name, filter_subject in (("a", EVERY_LOG), ("b", "logs.*.>"),
                                     ("c", subjects.job_log_subjects("team-b", theirs))):
            await ann.refused(ann.js.subscribe(
                filter_subject, stream=stream, ordered_consumer=True,
                config=ConsumerConfig(name=name)), f"consumer.create.{stream}.{name}")
        await ann.refused(ann.js.subscribe(
            subjects.job_log_subjects("team-a", mine), stream=stream, ordered_consumer=True),
            subjects.js_api("CONSUMER.CREATE", stream) + '"')
        await ann.refused(ann.js.get_msg(stream, seq=1), subjects.js_api("STREAM.MSG.GET"))
        await ann.refused(ann.js.get_last_msg(stream, EVERY_LOG, direct=True),
                          subjects.js_api("DIRECT.GET", stream, EVERY_LOG))
        await ann.nc.subscribe(subjects.job_log_subjects("team-b", theirs))
        await ann.nc.subscribe(EVERY_LOG)
        await ann.refused(ann.js.publish(subjects.platform_logs("team-a", mine), b"forged"),
                          subjects.platform_logs("team-a", mine))
        found = await ann.violations()
        assert any("subscription to \"logs.team-b." in v for v in found), found
        assert any('subscription to "logs.>"' in v for v in found), found


@pytest.mark.nats
async def test_logs_service_archives_a_log_the_cli_reads_back(
    connect_as: ConnectAs, nats_trust: Trust
) -> None:
    job = uuid4()
    end = LogEnd(job_id=job, attempt=1, state=JobState.SUCCEEDED, exit_code=0, error=None)
    async with (
        connect_as(nats_trust.user(permissions.role(Role.LOGS))) as logs,
        connect_as(nats_trust.user(permissions.role(Role.CLI))) as cli,
    ):
        await messaging.ensure_streams(logs.js)
        await logarchive.ensure_archive(logs.js)
        await logarchive.ensure_archive(logs.js)  # it exists: kept
        for _ in range(2):  # stored, then replaced (old chunks purged)
            await archive(logs, DEFAULT_NAMESPACE, job, end)
        found = await logarchive.info(cli.js, DEFAULT_NAMESPACE, job)
        assert found is not None
        assert [m async for m in logarchive.read(cli.js, found)] == [end]
        await logarchive.delete(logs.js, DEFAULT_NAMESPACE, job)
        assert await logarchive.info(cli.js, DEFAULT_NAMESPACE, job) is None
        assert await logs.violations() == []
        assert await cli.violations() == []


async def archive(logs: Connection, namespace: str, job: UUID, end: LogEnd) -> None:
    """Store a one-message log as the logs service does."""
    writer = logarchive.ArchiveWriter()
    try:
        writer.add(end)
        await writer.store(logs.js, namespace, job, truncated=False)
    finally:
        writer.discard()


@pytest.mark.nats
async def test_a_user_reads_the_archived_logs_of_its_own_namespace_only(
    connect_as: ConnectAs, nats_trust: Trust
) -> None:
    mine, theirs = uuid4(), uuid4()
    ends = {job: LogEnd(job_id=job, attempt=1, state=JobState.SUCCEEDED, exit_code=0)
            for job in (mine, theirs)}
    async with (
        connect_as(nats_trust.user(permissions.role(Role.LOGS))) as logs,
        connect_as(nats_trust.user(permissions.user("alice", "team-a"))) as alice,
        connect_as(nats_trust.user(permissions.user("root", "team-c", admin=True))) as admin,
    ):
        await logarchive.ensure_archive(logs.js)
        await archive(logs, "team-a", mine, ends[mine])
        await archive(logs, "team-b", theirs, ends[theirs])
        found = await logarchive.info(alice.js, "team-a", mine)
        assert found is not None
        assert [m async for m in logarchive.read(alice.js, found)] == [ends[mine]]
        assert await alice.violations() == []

        # B's meta and B's chunks, through the reader alice has.
        await refused(alice, logarchive.info(alice.js, "team-b", theirs),
                      subjects.log_archive_meta("team-b", theirs))
        leaked = await logarchive.info(admin.js, "team-b", theirs)  # as if she knew its put
        assert leaked is not None
        chunks = subjects.log_archive_chunks("team-b", theirs, leaked.put)
        await refused(alice, _drain(logarchive.read(alice.js, leaked)), chunks)

        # No way around it: each request names what it reads in its subject, or is refused.
        stream = subjects.LOG_ARCHIVE_STREAM
        await refused(alice, alice.js.get_msg(stream, seq=1),
                      subjects.js_api("STREAM.MSG.GET", stream))
        await refused(alice, alice.js.get_msg(stream, seq=1, direct=True),
                      subjects.js_api("DIRECT.GET", stream) + '"')
        await refused(alice, alice.js.subscribe(chunks, stream=stream, ordered_consumer=True),
                      subjects.js_api("CONSUMER.CREATE", stream) + '"')
        for every in ("archive.>", "archive.*.>", f"archive.*.{theirs}.>"):
            await refused(alice, alice.js.subscribe(
                every, stream=stream, ordered_consumer=True, config=ConsumerConfig(name="x")),
                subjects.js_api("CONSUMER.CREATE", stream, "x", every))
            await refused(alice, alice.js.get_last_msg(stream, every, direct=True),
                          subjects.js_api("DIRECT.GET", stream, every))
        # Her own namespace in the subject, B's filter in the body: the server refuses it.
        forged = {"stream_name": stream, "config": ConsumerConfig(
            name="y", filter_subject=chunks, deliver_subject=alice.nc.new_inbox()).as_dict()}
        reply = await alice.nc.request(
            subjects.js_api("CONSUMER.CREATE", stream, "y", f"archive.team-a.{theirs}.>"),
            json.dumps(forged).encode(), timeout=2)
        assert b"did not match filtered subject" in reply.data
        # A direct get on her own subject with a body asking for a sequence: refused too.
        reply = await alice.nc.request(
            subjects.js_api("DIRECT.GET", stream, subjects.log_archive_meta("team-a", mine)),
            json.dumps({"seq": 1}).encode(), timeout=2)
        assert (reply.headers or {}).get("Status") == "408"
        assert not reply.data

        # An admin reads every namespace's.
        for namespace, job in (("team-a", mine), ("team-b", theirs)):
            found = await logarchive.info(admin.js, namespace, job)
            assert found is not None
            assert [m async for m in logarchive.read(admin.js, found)] == [ends[job]]
        assert await admin.violations() == []
        assert await logs.violations() == []


async def refused(connection: Connection, action: Awaitable[object], subject: str) -> None:
    """:meth:`Connection.refused`, counting only what this action brought about."""
    connection.errors.clear()
    await connection.refused(action, subject)


async def _drain(messages: AsyncIterator[object]) -> None:
    async for _ in messages:
        pass


# --- the material itself ---------------------------------------------------------------------

def test_jwts_carry_their_issuer_and_a_repeatable_id(nats_trust: Trust) -> None:
    user = NKey.create(KeyKind.USER)
    first = jwt.user_jwt(nats_trust.account, user.public_key, "u", pub_allow=["a"],
                         sub_allow=["b"])
    claims = jwt.decode(first)
    assert claims["iss"] == nats_trust.account.public_key
    assert claims["sub"] == user.public_key
    assert claims["nats"] == {"type": "user", "version": 2, "pub": {"allow": ["a"]},
                              "sub": {"allow": ["b"]}, "subs": -1, "data": -1, "payload": -1,
                              "bearer_token": False}
    again = jwt.encode(nats_trust.account, user.public_key, "u", {}, issued_at=1000.0)
    assert jwt.decode(again)["jti"] == jwt.claim_id(
        {"iat": 1000, "iss": nats_trust.account.public_key, "name": "u",
         "sub": user.public_key})
    account = jwt.decode(nats_trust.account_jwt())["nats"]
    assert account["limits"]["disk_storage"] == -1
    assert "disk_storage" not in jwt.decode(nats_trust.system_jwt())["nats"]["limits"]


def test_seeds_are_written_for_their_owner_only(nats_trust: Trust, tmp_path: Path) -> None:
    nats_trust.save(tmp_path / "trust")
    assert Trust.load(tmp_path / "trust") == nats_trust
    user = nats_trust.user(permissions.role(Role.SUPERVISOR))
    creds_file = user.write(tmp_path / "supervisor.creds")
    for path in [creds_file, *(tmp_path / "trust").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert user.seed in creds_file.read_text()
    assert NKey.from_seed(user.seed, KeyKind.USER).public_key == jwt.decode(user.jwt)["sub"]


def test_an_agent_is_allowed_only_its_own_worker_and_job() -> None:
    worker, job = uuid4(), uuid4()
    agent = permissions.agent(worker, (NS, job))
    for subject in (*agent.publish, *agent.subscribe):
        assert str(worker) in subject or str(job) in subject or subject in (
            subjects.WORKER_REGISTER, subjects.js_flow_control(subjects.WORKER_ASSIGN_STREAM))
    assert not agent.respond
    assert permissions.agent(worker).publish[2] == subjects.worker_logs(worker)
