"""``hodei job ...``: queue, get, list, cancel, explain and show the history of jobs."""

from __future__ import annotations

from typing import Annotated

import typer

from hodei_cli import output
from hodei_cli.connection import call_api
from hodei_cli.logview import LogFilter, LogPrinter
from hodei_cli.output import Output, OutputOption
from hodei_cli.parsing import (
    SINCE_HELP,
    check_command,
    check_tail,
    check_timeout,
    parse_args,
    parse_cpus,
    parse_env,
    parse_job_id,
    parse_memory,
    parse_since,
    parse_state,
    parse_stream,
)
from hodei_cli.run import queue_job, run_job, show_logs
from hodei_common import eventloop
from hodei_common.contracts.api import SubmitJob
from hodei_common.contracts.jobs import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, Job, JobState

app = typer.Typer(help="Submit jobs and look at them, in the namespace HODEI_NAMESPACE names "
                  "(default: default).", no_args_is_help=True)

IdArg = Annotated[str | None, typer.Argument(help="job id", show_default=False)]
IdOpt = Annotated[str | None, typer.Option("--id", help="job id", show_default=False)]
# The flags of `job queue` and `job run`, as the old CLI's users know them.
CommandOpt = Annotated[str, typer.Option("--command", "-c", help="shell command to run")]
NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="a name for people")]
ArgsOpt = Annotated[
    str | None, typer.Option("--args", help="extra shell words appended to the command")
]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", "-e", help='"K=V,K2=V2" (repeatable)')]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", help="seconds before the job is killed")
]
ProviderOpt = Annotated[str, typer.Option(help="local, docker or kubernetes")]
KeyOpt = Annotated[
    str | None, typer.Option("--idempotency-key", help="a repeated key returns the same job")
]
PriorityOpt = Annotated[int, typer.Option(help="higher runs first")]
AttemptsOpt = Annotated[
    int, typer.Option("--max-attempts", help="runs allowed when workers are lost")
]
CpusOpt = Annotated[
    str | None, typer.Option("--cpus", help="CPUs the job may use, e.g. 0.5 (Docker)")
]
MemoryOpt = Annotated[
    str | None,
    typer.Option("--memory", help="memory limit, e.g. 256m or 2g (Docker; default 512m)"),
]


def build_submit(
    *,
    command: str,
    name: str | None,
    args: str | None,
    env: list[str],
    timeout: float | None,
    provider: str,
    idempotency_key: str | None,
    priority: int,
    max_attempts: int,
    cpus: str | None = None,
    memory: str | None = None,
) -> SubmitJob:
    """The submit request from ``job queue``/``job run`` flags, validated locally first."""
    check_command(command)
    return SubmitJob(
        command=command,
        name=name if name is not None else command.split()[0][:100],
        args=parse_args(args),
        env=parse_env(env),
        timeout_s=check_timeout(timeout) or DEFAULT_TIMEOUT_S,
        provider=provider,
        idempotency_key=idempotency_key,
        priority=priority,
        max_attempts=max_attempts,
        cpus=parse_cpus(cpus),
        memory_bytes=parse_memory(memory),
    )


@app.command("queue")
def queue(
    command: CommandOpt,
    name: NameOpt = None,
    args: ArgsOpt = None,
    env: EnvOpt = None,
    timeout: TimeoutOpt = None,
    provider: ProviderOpt = "local",
    idempotency_key: KeyOpt = None,
    priority: PriorityOpt = 0,
    max_attempts: AttemptsOpt = DEFAULT_MAX_ATTEMPTS,
    cpus: CpusOpt = None,
    memory: MemoryOpt = None,
    out: Output = OutputOption,
) -> None:
    """Queue a job and print its id."""
    request = build_submit(
        command=command, name=name, args=args, env=env or [], timeout=timeout,
        provider=provider, idempotency_key=idempotency_key, priority=priority,
        max_attempts=max_attempts, cpus=cpus, memory=memory,
    )

    job = call_api(lambda api: queue_job(api, request)).job
    if out is Output.JSON:
        output.emit_json(job)
    else:
        typer.echo(str(job.id))


@app.command("run")
def run(
    command: CommandOpt,
    name: NameOpt = None,
    args: ArgsOpt = None,
    env: EnvOpt = None,
    timeout: TimeoutOpt = None,
    provider: ProviderOpt = "local",
    idempotency_key: KeyOpt = None,
    priority: PriorityOpt = 0,
    max_attempts: AttemptsOpt = DEFAULT_MAX_ATTEMPTS,
    cpus: CpusOpt = None,
    memory: MemoryOpt = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="print the id and return")] = False,
) -> None:
    """Run a job, show its output live, and exit with its exit code (124 timeout, 130 cancel)."""
    request = build_submit(
        command=command, name=name, args=args, env=env or [], timeout=timeout,
        provider=provider, idempotency_key=idempotency_key, priority=priority,
        max_attempts=max_attempts, cpus=cpus, memory=memory,
    )
    code = eventloop.run(run_job(request, detach=detach))
    raise typer.Exit(code)


@app.command("logs")
def logs(
    job_id: IdArg = None,
    id_: IdOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="until the job ends")] = False,
    since: Annotated[str | None, typer.Option(help=f"only lines after {SINCE_HELP}",
                                              show_default=False)] = None,
    tail: Annotated[int | None, typer.Option(help="only the last N lines (then new ones, "
                                                  "with --follow)", show_default=False)] = None,
    stream: Annotated[str | None, typer.Option(help="stdout or stderr only",
                                               show_default=False)] = None,
    timestamps: Annotated[bool, typer.Option(help="prefix lines with their time (UTC)")] = False,
) -> None:
    """A job's output so far; with --follow, everything until it ends."""
    jid = parse_job_id(job_id, id_)
    keep = LogFilter(since=parse_since(since), stream=parse_stream(stream))
    printer = LogPrinter(keep, timestamps=timestamps, tail=check_tail(tail))
    raise typer.Exit(eventloop.run(show_logs(jid, follow=follow, printer=printer)))


def env_line(job: Job) -> str | None:
    """``K=value, K2=value2`` when the values came, else ``K=<hidden>, K2=<hidden>``."""
    keys = job.env_keys or sorted(job.env)  # an older API sent no env_keys
    if not keys:
        return None
    return ", ".join(f"{k}={job.env.get(k, '<hidden>')}" for k in keys)


def show_job(job: Job) -> None:
    output.details([
        ("id", job.id), ("namespace", job.namespace), ("name", job.name), ("state", job.state),
        ("command", job.command),
        ("args", job.args), ("env", env_line(job)), ("provider", job.provider),
        ("timeout", f"{job.timeout_s:g}s"), ("cpus", job.cpus),
        ("memory", job.memory_bytes), ("attempt", f"{job.attempt}/{job.max_attempts}"),
        ("worker", job.worker_id), ("exit code", job.exit_code), ("error", job.error),
        ("created", job.created_at), ("started", job.started_at),
        ("completed", job.completed_at), ("cancel requested", job.cancel_requested_at),
        ("log", "truncated at its byte cap" if job.log_truncated else None),
        ("trace", job.trace_id),
    ])


@app.command("get")
def get(
    job_id: IdArg = None,
    id_: IdOpt = None,
    show_env: Annotated[bool, typer.Option(
        "--show-env", help="show the values of its env (secrets); else only the names")] = False,
    out: Output = OutputOption,
) -> None:
    """Show one job; its env values are hidden unless --show-env."""
    jid = parse_job_id(job_id, id_)

    job = call_api(lambda api: api.get(jid, show_env=show_env))
    if out is Output.JSON:
        output.emit_json(job)
    else:
        show_job(job)


@app.command("list")
def list_(
    state: Annotated[str | None, typer.Option(help="only jobs in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many")] = 50,
    out: Output = OutputOption,
) -> None:
    """List the namespace's jobs (HODEI_NAMESPACE), newest first."""
    wanted = parse_state(JobState, state)

    jobs = call_api(lambda api: api.list_jobs(state=wanted, limit=limit))
    if out is Output.JSON:
        output.emit_json(jobs)
        return
    output.table(
        ["ID", "NAMESPACE", "NAME", "STATE", "PROVIDER", "ATTEMPT", "EXIT", "CREATED"],
        [[j.id, j.namespace, j.name, j.state, j.provider, j.attempt, j.exit_code, j.created_at]
         for j in jobs],
    )


@app.command("cancel")
def cancel(job_id: IdArg = None, id_: IdOpt = None, out: Output = OutputOption) -> None:
    """Cancel a job: at once when queued, through its worker when running."""
    jid = parse_job_id(job_id, id_)

    reply = call_api(lambda api: api.cancel(jid))
    job = reply.job
    if out is Output.JSON:
        output.emit_json(job)
    elif reply.cancelled:
        typer.echo(f"{job.id} CANCELLED")
    else:
        typer.echo(f"{job.id} cancellation requested (job is {job.state.value})")


@app.command("events")
def events(job_id: IdArg = None, id_: IdOpt = None, out: Output = OutputOption) -> None:
    """A job's domain events, oldest first, with their times."""
    jid = parse_job_id(job_id, id_)

    found = call_api(lambda api: api.events(jid))
    if out is Output.JSON:
        output.emit_json(found)
        return
    rows = []
    for e in found:
        payload = dict(e.payload)
        for key in ("event_id", "occurred_at", "job_id", "correlation_id", "actor"):
            payload.pop(key, None)
        rows.append([e.occurred_at, e.event_type, e.actor, payload])
    output.table(["TIME", "EVENT", "ACTOR", "DETAILS"], rows)


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s ago"


@app.command("explain")
def explain(job_id: IdArg = None, id_: IdOpt = None, out: Output = OutputOption) -> None:
    """Where a job is, what it waits for, its worker's last heartbeat, what last failed."""
    jid = parse_job_id(job_id, id_)

    found = call_api(lambda api: api.explain(jid))
    if out is Output.JSON:
        output.emit_json(found)
        return
    job = found.job
    typer.echo(f"job {job.id}: {job.state.value}, attempt {job.attempt} of {job.max_attempts}")
    typer.echo(f"waiting for: {found.waiting_for}")
    if found.worker_id is not None:
        state = found.worker_state.value if found.worker_state else "?"
        typer.echo(f"worker: {found.worker_id} {state}, last heartbeat "
                   f"{_age(found.heartbeat_age_s)}")
        if found.worker_resource is not None or found.worker_status is not None:
            status = (f", last status: {found.worker_status} "
                      f"({_age(found.worker_status_age_s)})" if found.worker_status else "")
            typer.echo(f"resource: {found.worker_resource or 'not recorded yet'}{status}")
    else:
        typer.echo("worker: none yet")
    if job.error:
        typer.echo(f"last error: {job.error}")
    if found.last_failure is not None:
        retried = f", retried {found.retries}x" if found.retries else ""
        typer.echo(f"last failed step: {found.last_failure} "
                   f"({_age(found.last_failure_age_s)}{retried})")
