"""One function per API endpoint: a decoded request in, a reply struct out, errors raised."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg
import msgspec

from hodei_api import store
from hodei_common.contracts.api import (
    CancelJobReply,
    GetJob,
    JobEvents,
    JobList,
    JobRef,
    JobReply,
    ListJobs,
    ListProviders,
    ListWorkers,
    ProviderList,
    ProviderReply,
    SubmitJob,
    SubmitJobReply,
    UpdateProvider,
    WorkerList,
)
from hodei_common.contracts.jobs import (
    MAX_COMMAND_BYTES,
    MAX_CPUS,
    MAX_ENV_ENTRIES,
    MAX_MEMORY_BYTES,
    MAX_TIMEOUT_S,
    MIN_CPUS,
    MIN_MEMORY_BYTES,
    Job,
    JobState,
)
from hodei_common.contracts.providers import (
    dump_settings,
    setting_names,
    settings_type,
    validate_settings,
)
from hodei_common.contracts.workers import ProviderConfig
from hodei_common.database import Conn
from hodei_common.errors import NotFoundError, PreconditionError, ValidationError
from hodei_common.lifecycle import jobs, providers

ACTOR = "api"
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUOTE_LIMIT = 60
# msgspec names the field but not the unit; these constraint failures get a plainer line.
_CONSTRAINT_HINTS = {
    "$.timeout_s": "timeout_s must be a positive number of seconds, at most "
    f"{MAX_TIMEOUT_S:g} (7 days)",
    "$.cpus": f"cpus must be a number of CPUs from {MIN_CPUS:g} to {MAX_CPUS:g}",
    "$.memory_bytes": f"memory_bytes must be from {MIN_MEMORY_BYTES // 2**20} MiB to "
    f"{MAX_MEMORY_BYTES // 2**40} TiB",
}


def quote(value: str) -> str:
    """``value`` quoted for a one-line message: escaped and cut short."""
    if len(value) > _QUOTE_LIMIT:
        value = value[:_QUOTE_LIMIT] + "..."
    return repr(value)


def describe_validation_error(message: str) -> str:
    """msgspec's message, or a plainer one for a range error on a known field."""
    for path, hint in _CONSTRAINT_HINTS.items():
        if message.endswith(f"at `{path}`") and ", got " not in message:
            return hint
    return message


def validate_submit(req: SubmitJob) -> None:
    """Checks beyond the struct's types; each failure is one line naming the field."""
    if not req.command.strip():
        raise ValidationError("command must not be empty")
    if len(req.command.encode()) > MAX_COMMAND_BYTES:
        raise ValidationError(f"command is larger than {MAX_COMMAND_BYTES // 1024} KiB")
    # PostgreSQL text cannot hold NUL, and a NUL would cut the command short in a shell anyway.
    if "\0" in req.command:
        raise ValidationError("command must not contain NUL bytes")
    if any("\0" in arg for arg in req.args):
        raise ValidationError("args must not contain NUL bytes")
    if len(req.env) > MAX_ENV_ENTRIES:
        raise ValidationError(f"env has {len(req.env)} entries; at most {MAX_ENV_ENTRIES}")
    for key, value in req.env.items():
        if not _ENV_KEY_RE.fullmatch(key):  # match() with $ would let "A\n" through
            raise ValidationError(f"env key {quote(key)} is not a valid variable name")
        if "\0" in value:
            # Never echo an env value: it may be a secret.
            raise ValidationError(f"env value of {key} must not contain NUL bytes")
    named: dict[str, str | None] = {
        "name": req.name,
        "provider": req.provider,
        "idempotency_key": req.idempotency_key,
    }
    for field, text in named.items():
        if text is not None and "\0" in text:
            raise ValidationError(f"{field} must not contain NUL bytes")


@dataclass(frozen=True)
class Submitted:
    """The reply to a submit, and the new job's row when it went to an idle worker at once
    (its assignment is then the api's to send)."""

    reply: SubmitJobReply
    assigned: asyncpg.Record | None = None


async def submit_jobs(pool: asyncpg.Pool, batch: Sequence[jobs.NewJob], *,
                      assign_now: bool = False) -> list[Submitted | Exception]:
    """Store the jobs of ``batch`` and their events in one statement: QUEUED, or with
    ``assign_now`` assigned at once to idle workers that fit them. For each job, in order,
    the reply to its submit or the error that kept it out."""
    async with pool.acquire() as conn:
        rows = {row["id"]: row for row in await jobs.submit_many(conn, batch,
                                                                 assign_now=assign_now)}
        results: list[Submitted | Exception] = []
        for new in batch:
            row = rows.get(new.job_id)
            job = store.job_from_row(row)
            if job is not None:
                assert row is not None
                results.append(Submitted(SubmitJobReply(job=job, created=True),
                                         row if row["worker_id"] is not None else None))
                continue
            try:
                existing = await _why_not_inserted(conn, new.namespace, new.req)
            except Exception as e:  # the others' jobs are stored: their replies still go
                results.append(e)
            else:
                results.append(Submitted(SubmitJobReply(job=existing, created=False)))
        return results


async def _why_not_inserted(conn: Conn, namespace: str, req: SubmitJob) -> Job:
    """The job the namespace's idempotency key or the request's id already names, or the
    error that kept the job out."""
    provider = await store.get_provider(conn, req.provider)
    if provider is None:
        known = ", ".join(await store.provider_names(conn))
        raise ValidationError(f"unknown provider {quote(req.provider)} (known: {known})")
    if not provider.enabled:
        raise PreconditionError(f"provider {quote(req.provider)} is disabled")
    if req.idempotency_key is not None:
        existing = await store.job_by_idempotency_key(conn, namespace, req.idempotency_key)
        if existing is not None:
            return existing
    if req.id is not None:
        existing = await store.get_job(conn, namespace, req.id)
        if existing is not None and (existing.command, existing.args) == (req.command, req.args):
            return existing
        # Said alike whether the other job is this namespace's or another's.
        if existing is not None or await store.job_id_taken(conn, req.id):
            raise ValidationError(f"job id {req.id} is already taken by another job")
    # The provider was disabled (or the keyed job deleted) between the two statements.
    raise PreconditionError("the job could not be stored; try again")


async def get_job(pool: asyncpg.Pool, namespace: str, req: GetJob) -> JobReply:
    """One job of ``namespace`` by id; its env values only when the request asks for them."""
    async with pool.acquire() as conn:
        job = await store.get_job(conn, namespace, req.id, show_env=req.show_env)
    if job is None:
        raise job_not_found(req.id)
    return JobReply(job=job)


async def list_jobs(pool: asyncpg.Pool, namespace: str, req: ListJobs) -> JobList:
    """The jobs of ``namespace`` newest first, optionally of one state."""
    async with pool.acquire() as conn:
        jobs = await store.list_jobs(conn, namespace, state=req.state, limit=req.limit)
    return JobList(jobs=jobs)


async def cancel_job(pool: asyncpg.Pool, namespace: str, req: JobRef) -> CancelJobReply:
    """Cancel a queued job of ``namespace`` at once, or ask the worker of a running one to
    stop."""
    async with pool.acquire() as conn, conn.transaction():
        # The row lock keeps the state from moving between the check and the update.
        job = await store.lock_job(conn, namespace, req.id)
        if job is None:
            raise job_not_found(req.id)
        if job.state.terminal:
            raise PreconditionError(f"job {job.id} is already {job.state}")
        if job.state is JobState.QUEUED:
            cancelled = store.job_from_row(
                await jobs.cancel_queued(conn, job.id, job.attempt, actor=ACTOR))
            if cancelled is None:
                raise RuntimeError(f"job {job.id} left QUEUED while locked")
            return CancelJobReply(job=cancelled, cancelled=True)
        requested = store.job_from_row(
            await jobs.request_cancel(conn, job.id, job.attempt, job.worker_id, actor=ACTOR))
        if requested is None:  # asked before: the worker already has its orders
            return CancelJobReply(job=job, cancelled=False)
        return CancelJobReply(job=requested, cancelled=False)


async def job_events(pool: asyncpg.Pool, namespace: str, req: JobRef) -> JobEvents:
    """The audit events of a job of ``namespace``, oldest first."""
    async with pool.acquire() as conn:
        if await store.get_job(conn, namespace, req.id) is None:
            raise job_not_found(req.id)
        events = await store.job_events(conn, req.id)
    return JobEvents(events=events)


async def list_workers(pool: asyncpg.Pool, req: ListWorkers) -> WorkerList:
    """Workers newest first, optionally of one state."""
    async with pool.acquire() as conn:
        workers = await store.list_workers(conn, state=req.state, limit=req.limit)
    return WorkerList(workers=workers)


async def list_providers(pool: asyncpg.Pool, req: ListProviders) -> ProviderList:
    """Every provider configuration, by name."""
    async with pool.acquire() as conn:
        providers = await store.list_providers(conn)
    return ProviderList(providers=providers)


async def update_provider(pool: asyncpg.Pool, req: UpdateProvider) -> ProviderReply:
    """Change a provider's configuration (enabled, mode, pool sizes, image, settings)."""
    columns: dict[str, object] = {
        key: value for key, value in msgspec.structs.asdict(req).items()
        if key not in ("name", "settings") and value is not None
    }
    if not columns and not req.settings:
        raise ValidationError("nothing to change: give at least one setting")
    changes = {**columns, "settings": req.settings} if req.settings else columns
    async with pool.acquire() as conn, conn.transaction():
        # The row lock keeps the settings checked below from changing before the update.
        current = await store.lock_provider(conn, req.name)
        if current is None:
            known = ", ".join(await store.provider_names(conn))
            raise NotFoundError(f"unknown provider {quote(req.name)} (known: {known})")
        row = await providers.update(
            conn, current.id or uuid4(), req.name, enabled=req.enabled,
            worker_mode=None if req.worker_mode is None else req.worker_mode.value,
            max_workers=req.max_workers, min_idle=req.min_idle, image=req.image,
            settings=_settings_patch(current, req.settings) if req.settings else {},
            changes=changes, actor=ACTOR)
    provider = store.provider_from_row(row)
    if provider is None:
        raise ValidationError("min_idle cannot be larger than max_workers")
    return ProviderReply(provider=provider)


def _settings_patch(provider: ProviderConfig, asked: Mapping[str, object]) -> dict[str, object]:
    """What turns the provider's stored settings into the document asked for (``asked``
    applied, null removing a key) once that document is checked against its kind's struct:
    the document's keys and values, and null for each stored key it no longer has (keys its
    kind does not have included)."""
    kept = {k: v for k, v in provider.settings.items()
            if k in setting_names(settings_type(provider.kind))}
    document = {k: v for k, v in {**kept, **asked}.items() if v is not None}
    try:
        checked = dump_settings(validate_settings(provider.kind, document))
    except ValidationError as e:
        raise ValidationError(f"provider {quote(provider.name)}: {e}") from e
    return {**dict.fromkeys(provider.settings), **checked}


def job_not_found(job_id: UUID) -> NotFoundError:
    """The one error for a job id that is unknown or another namespace's: the two must not be
    told apart."""
    return NotFoundError(f"job {job_id} not found")
