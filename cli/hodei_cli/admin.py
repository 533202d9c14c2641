"""``hodei migrate``, ``hodei service``, ``hodei worker``, ``hodei provider list`` and ``set``."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from hodei_cli import kubeflags, output
from hodei_cli.connection import call_admin_api, cli_settings
from hodei_cli.output import Output, OutputOption
from hodei_cli.parsing import parse_cpus, parse_memory, parse_state
from hodei_cli.services import SERVICES
from hodei_common import database, eventloop, platform_settings
from hodei_common.contracts.api import UpdateProvider
from hodei_common.contracts.workers import ProviderConfig, WorkerMode, WorkerState
from hodei_common.errors import ValidationError
from hodei_common.runner import configure_logging, run_probed
from hodei_common.settings import Settings
from hodei_migrations import applied_version, migrate

worker_app = typer.Typer(help="Look at workers.", no_args_is_help=True)
provider_app = typer.Typer(help="Look at providers.", no_args_is_help=True)


async def run_migrations(
    settings: Settings,
) -> tuple[list[str], int | None, list[platform_settings.Change]]:
    """Apply pending migrations, then record the platform settings the environment sets;
    return the migrations' labels, the resulting version and the settings changed."""
    conn = await database.connect(settings)
    try:
        done = await migrate(conn)
        changed = await platform_settings.record(conn, settings)
        return [m.label for m in done], await applied_version(conn), changed
    finally:
        await conn.close()


def migrate_command() -> None:
    """Bring the database schema up to date and record the platform settings the
    environment sets (HODEI_HEARTBEAT_INTERVAL_S, HODEI_LOGS_MAX_AGE_S); safe to run any
    number of times."""
    done, version, changed = asyncio.run(run_migrations(cli_settings()))
    for label in done:
        typer.echo(f"applied {label}")
    typer.echo(f"schema is at version {version}")
    for change in changed:
        typer.echo(f"platform setting {platform_settings.describe(change)}")


def service_command(
    name: Annotated[str, typer.Argument(help=f"one of: {', '.join(SERVICES)}")],
) -> None:
    """Run one service in the foreground against HODEI_NATS_URL/HODEI_DATABASE_URL."""
    build = SERVICES.get(name)
    if build is None:
        raise ValidationError(f"unknown service '{name}' (one of {', '.join(SERVICES)})")
    service = build(None)
    configure_logging(service.settings.log_level)
    eventloop.run(run_probed([service], service.settings.metrics_addr))


@worker_app.command("list")
def list_workers(
    state: Annotated[str | None, typer.Option(help="only workers in this state")] = None,
    out: Output = OutputOption,
) -> None:
    """List workers, newest first."""
    wanted = parse_state(WorkerState, state)

    workers = call_admin_api(lambda api: api.list_workers(state=wanted))
    if out is Output.JSON:
        output.emit_json(workers)
        return
    output.table(
        ["ID", "STATE", "PROVIDER", "RESOURCE", "JOB", "HEARTBEAT", "CREATED"],
        [[w.id, w.state, w.provider, w.provider_resource_id, w.current_job_id,
          output.age(w.last_heartbeat), w.created_at] for w in workers],
    )


@worker_app.command("build-image")
def build_image(
    tag: Annotated[
        str | None,
        typer.Option("--tag", help="image tag (default: $HODEI_WORKER_IMAGE or "
                                   "hodei-agent:latest)"),
    ] = None,
    base_image: Annotated[
        str | None, typer.Option("--base-image", help="base image with python3 and venv")
    ] = None,
    local_base: Annotated[
        bool, typer.Option("--local-base", help="make the base here with debootstrap")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="build even if up to date")] = False,
) -> None:
    """Build the Docker worker image from this source tree (no network in the build)."""
    from hodei_cli import image

    if local_base and base_image is not None:
        raise ValidationError("give --local-base or --base-image, not both")
    image.build_worker_image(tag or image.default_tag(), base_image=base_image,
                             local_base=local_base, force=force, say=typer.echo)


@provider_app.command("list")
def list_providers(out: Output = OutputOption) -> None:
    """List providers and their configuration."""

    providers = call_admin_api(lambda api: api.list_providers())
    if out is Output.JSON:
        output.emit_json(providers)
        return
    _provider_table(providers)


def _provider_table(providers: list[ProviderConfig]) -> None:
    output.table(
        ["NAME", "KIND", "ENABLED", "MODE", "MAX WORKERS", "MIN IDLE", "SETTINGS", "IMAGE"],
        [[p.name, p.kind, "yes" if p.enabled else "no", p.worker_mode, p.max_workers,
          p.min_idle, p.settings, p.image] for p in providers],
    )


@provider_app.command("set")
def set_provider(
    name: Annotated[str, typer.Argument(help="local, docker or kubernetes")],
    enabled: Annotated[
        bool | None, typer.Option("--enable/--disable", help="take jobs or not")
    ] = None,
    mode: Annotated[
        str | None, typer.Option("--mode", help="ephemeral (one job) or reusable")
    ] = None,
    max_workers: Annotated[int | None, typer.Option("--max-workers", min=0)] = None,
    min_idle: Annotated[
        int | None, typer.Option("--min-idle", min=0, help="warm pool: workers kept waiting")
    ] = None,
    max_jobs: Annotated[
        int | None,
        typer.Option("--max-jobs", min=0, help="reusable: jobs per worker, 0 = no limit"),
    ] = None,
    idle_ttl: Annotated[
        float | None,
        typer.Option("--idle-ttl", min=0, help="seconds an idle worker is kept, 0 = forever"),
    ] = None,
    image: Annotated[
        str | None, typer.Option("--image", help="worker image (docker, kubernetes)")
    ] = None,
    cpus: Annotated[
        str | None, typer.Option("--cpus", help="default CPUs of a job, 0 = no default")
    ] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", help="default memory of a job, 0 = no default")
    ] = None,
    network: Annotated[
        str | None,
        typer.Option("--network", help="docker only: the network mode (host, bridge, none, "
                                       "container:NAME or a network), '' = host"),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", help="kubernetes: the pods' namespace")
    ] = None,
    kubeconfig: Annotated[
        str | None, typer.Option("--kubeconfig", help="kubernetes: a kubeconfig file")
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="kubernetes: the kubeconfig's context")
    ] = None,
    in_cluster: Annotated[
        bool, typer.Option("--in-cluster", help="kubernetes: the provisioner's own pod's "
                                                "service account")
    ] = False,
    service_account: Annotated[
        str | None, typer.Option("--service-account", help="kubernetes: the pods' account")
    ] = None,
    node_selector: Annotated[
        list[str] | None, typer.Option("--node-selector", metavar="KEY=VALUE",
                                       help="kubernetes: a node label (repeatable)")
    ] = None,
    tolerations: Annotated[
        list[str] | None, typer.Option("--toleration", metavar="KEY[=VALUE][:EFFECT]",
                                       help="kubernetes: a taint tolerated (repeatable)")
    ] = None,
    pull_secrets: Annotated[
        list[str] | None, typer.Option("--image-pull-secret",
                                       help="kubernetes: a registry Secret (repeatable)")
    ] = None,
    priority_class: Annotated[
        str | None, typer.Option("--priority-class", help="kubernetes: the pods' class")
    ] = None,
    host_network: Annotated[
        bool | None, typer.Option("--host-network/--no-host-network",
                                  help="kubernetes: pods on their node's network")
    ] = None,
    agent_nats_url: Annotated[
        str | None, typer.Option("--agent-nats-url", help="kubernetes: NATS as pods reach it")
    ] = None,
    pending_timeout: Annotated[
        float | None, typer.Option("--pending-timeout", min=0, metavar="SECONDS",
                                   help="kubernetes: fail a job whose pod no node takes")
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE",
                     help="any setting of the provider's kind (repeatable); VALUE is read as "
                          "JSON when it parses, else as text; an empty VALUE removes the key"),
    ] = None,
    out: Output = OutputOption,
) -> None:
    """Change a provider's configuration: worker mode, pool sizes, limits, image, enabled."""
    flags: dict[str, object] = {}
    if max_jobs is not None:
        flags["max_jobs"] = max_jobs or None
    if idle_ttl is not None:
        flags["idle_ttl_s"] = idle_ttl or None
    if cpus is not None:
        flags["cpus"] = None if _is_zero(cpus) else parse_cpus(cpus)
    if memory is not None:
        flags["memory_bytes"] = None if _is_zero(memory) else parse_memory(memory)
    if network is not None:
        flags["network_mode"] = network.strip() or None
    if kubeconfig is not None and in_cluster:
        raise ValidationError("give --kubeconfig (and --context) or --in-cluster, not both")
    flags |= _kubernetes_flags(
        namespace=namespace, context=context, service_account=service_account,
        priority_class=priority_class, host_network=host_network,
        agent_nats_url=agent_nats_url, pending_timeout_s=pending_timeout or None,
        in_cluster=True if in_cluster else None,
        kubeconfig=None if kubeconfig is None else kubeflags.kubeconfig_path(kubeconfig,
                                                                             context),
        node_selector=kubeflags.key_values("--node-selector", node_selector or []) or None,
        tolerations=[kubeflags.toleration(t) for t in tolerations or []] or None,
        image_pull_secrets=pull_secrets or None,
    )
    request = UpdateProvider(
        name=name, enabled=enabled, worker_mode=parse_state(WorkerMode, mode),
        max_workers=max_workers, min_idle=min_idle, image=_non_empty("--image", image),
        settings=parse_assignments(assignments or [], flags),
    )

    provider = call_admin_api(lambda api: api.update_provider(request))
    if out is Output.JSON:
        output.emit_json(provider)
    else:
        _provider_table([provider])


def _kubernetes_flags(**given: object) -> dict[str, object]:
    """The Kubernetes options given (left out when not)."""
    return {key: value for key, value in given.items() if value is not None}


def parse_assignments(assignments: list[str], flags: dict[str, object]) -> dict[str, object]:
    """The settings to change: those of the named options, then each ``--set KEY=VALUE``."""
    settings = dict(flags)
    for assignment in assignments:
        key, equals, raw = assignment.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValidationError(f"--set takes KEY=VALUE, not {assignment!r}")
        if key in settings:
            raise ValidationError(f"--set {key} names a setting given twice")
        settings[key] = _setting_value(raw)
    return settings


def _setting_value(raw: str) -> object:
    if not raw.strip():
        return None
    try:
        return json.loads(raw, parse_constant=_not_json)
    except ValueError:
        return raw


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")  # NaN would reach the API as null


def _is_zero(raw: str | None) -> bool:
    return raw is not None and raw.strip() in ("0", "0.0")


def _non_empty(option: str, raw: str | None) -> str | None:
    if raw is not None and not raw.strip():
        raise ValidationError(f"{option} must not be empty")
    return raw
