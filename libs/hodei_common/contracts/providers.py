"""Provider settings: the typed form of ``provider_configs.settings``, one struct per kind.

The stored JSONB document holds a struct's fields that are set, under their own names; an
absent key means "not set". So SQL reading a key by name (``settings->>'max_jobs'``,
``settings ? 'idle_ttl_s'``) sees the same keys, with the same meaning, as this module.

Writers are strict: the API refuses a document with a key the kind does not have, or a bad
value, in one line (:func:`validate_settings`). Readers of a stored document
(:func:`load_settings`) ignore keys the kind does not have, as every reader of a contract
does, and refuse a bad value.

A new kind of provider adds one struct here, registered in :data:`SETTINGS_BY_KIND`, and
one provider module in the provisioner. A kind with no struct has the common settings.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Annotated, Literal, TypeVar

import msgspec

from hodei_common.contracts.jobs import (
    MAX_CPUS,
    MAX_MEMORY_BYTES,
    MIN_CPUS,
    MIN_MEMORY_BYTES,
    Cpus,
    MemoryBytes,
)
from hodei_common.contracts.namespaces import DNS_LABEL
from hodei_common.errors import ValidationError

# Past a year an idle worker is simply kept; the bound keeps the scheduler's interval sane.
MAX_IDLE_TTL_S = 365 * 24 * 3600.0
_QUOTE_LIMIT = 60
# "... - at `$.name`", "... - at `$.name[0].part`", "... - at `key` in `$.name`"; also
# "... - at `$`" (a check of the whole document).
_AT_FIELD = re.compile(r"- at (?:`key` in )?`\$(?:\.(?P<name>[A-Za-z0-9_]+)(?P<rest>[^`]*))?`$")


class ProviderSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                       omit_defaults=True):
    """The settings every kind of provider has; None (an absent key) means not set.

    Each field's description completes "NAME must be ..." in an error line.
    """

    # Reusable workers: jobs one worker runs before it leaves; not set: no limit.
    max_jobs: Annotated[int, msgspec.Meta(
        ge=1, description="a whole number of jobs, at least 1")] | None = None
    # Idle workers beyond min_idle are retired after this long; not set: kept.
    idle_ttl_s: Annotated[float, msgspec.Meta(
        gt=0, le=MAX_IDLE_TTL_S,
        description="a number of seconds above 0, at most 365 days")] | None = None
    # Limits of a job that asks for none (enforced by providers that can limit).
    cpus: Annotated[Cpus, msgspec.Meta(
        description=f"a number of CPUs from {MIN_CPUS:g} to {MAX_CPUS:g}")] | None = None
    memory_bytes: Annotated[MemoryBytes, msgspec.Meta(
        description=f"a whole number of bytes from {MIN_MEMORY_BYTES // 2**20} MiB to "
                    f"{MAX_MEMORY_BYTES // 2**40} TiB")] | None = None


class LocalSettings(ProviderSettings, frozen=True, kw_only=True):
    """Local processes: the common settings only."""


class DockerSettings(ProviderSettings, frozen=True, kw_only=True):
    """Docker containers."""

    # The container's network; not set: host, so that an agent reaches a NATS server that
    # listens on 127.0.0.1.
    network_mode: Annotated[str, msgspec.Meta(
        min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        description="a Docker network mode: host, bridge, none, container:NAME or the name "
                    "of a network")] | None = None


# Kubernetes names and labels (apimachinery's validation, as patterns).
_DNS_SUBDOMAIN = rf"{DNS_LABEL}(\.{DNS_LABEL})*"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
LabelKey = Annotated[str, msgspec.Meta(
    min_length=1, max_length=253 + 1 + 63, pattern=rf"^({_DNS_SUBDOMAIN}/)?{_LABEL_NAME}$")]
LabelValue = Annotated[str, msgspec.Meta(max_length=63, pattern=rf"^({_LABEL_NAME})?$")]
NAMESPACE_DESCRIPTION = "a Kubernetes namespace: lower-case letters, digits and '-', at most 63"
LABELS_DESCRIPTION = ("Kubernetes labels: keys [prefix/]name, names and values of at most 63 "
                      "letters, digits, '-', '_' or '.'")
# Labels the provider sets itself on every pod: an operator's labels may not replace them.
RESERVED_LABEL_PREFIX = "hodei."


class TolerationEffect(enum.StrEnum):
    """What a taint does to pods that do not tolerate it."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                 omit_defaults=True):
    """A pod toleration: ``key=value:Effect`` (operator Equal) or ``key:Effect`` (Exists)."""

    key: LabelKey
    operator: Literal["Equal", "Exists"] = "Equal"
    value: LabelValue | None = None
    effect: TolerationEffect | None = None  # None: every effect

    def __post_init__(self) -> None:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")


class ImagePullPolicy(enum.StrEnum):
    """When the kubelet pulls the worker image."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class KubernetesSettings(ProviderSettings, frozen=True, kw_only=True):
    """Kubernetes pods: where they run, how they reach NATS, and what the cluster needs."""

    namespace: Annotated[str, msgspec.Meta(
        max_length=63, pattern=rf"^{DNS_LABEL}$",
        description=f"{NAMESPACE_DESCRIPTION} characters")] | None = None
    # Where the provisioner finds the cluster: a kubeconfig file (and context), or the
    # service account of the pod it runs in; neither: in-cluster when in a pod, else
    # $KUBECONFIG or ~/.kube/config.
    kubeconfig: Annotated[str, msgspec.Meta(
        min_length=1, max_length=4096, description="a path to a kubeconfig file")] | None = None
    context: Annotated[str, msgspec.Meta(
        min_length=1, max_length=253, description="a context of the kubeconfig")] | None = None
    in_cluster: bool | None = None
    service_account: Annotated[str, msgspec.Meta(
        max_length=253, pattern=rf"^{_DNS_SUBDOMAIN}$",
        description="a service account name (a DNS subdomain)")] | None = None
    node_selector: Annotated[dict[LabelKey, LabelValue], msgspec.Meta(
        description=LABELS_DESCRIPTION)] | None = None
    tolerations: Annotated[list[Toleration], msgspec.Meta(
        description="tolerations key=value:Effect or key:Effect, Effect one of "
                    "NoSchedule, PreferNoSchedule, NoExecute")] | None = None
    image_pull_policy: ImagePullPolicy | None = None
    image_pull_secrets: Annotated[list[Annotated[str, msgspec.Meta(
        max_length=253, pattern=rf"^{_DNS_SUBDOMAIN}$")]], msgspec.Meta(
        description="names of Secrets (DNS subdomains)")] | None = None
    priority_class: Annotated[str, msgspec.Meta(
        max_length=253, pattern=rf"^{_DNS_SUBDOMAIN}$",
        description="a priority class name (a DNS subdomain)")] | None = None
    labels: Annotated[dict[LabelKey, LabelValue], msgspec.Meta(
        description=LABELS_DESCRIPTION)] | None = None
    annotations: Annotated[dict[LabelKey, Annotated[str, msgspec.Meta(max_length=4096)]],
                           msgspec.Meta(description="Kubernetes annotations")] | None = None
    # For clusters where pods reach NATS only through their node.
    host_network: bool | None = None
    # The NATS URL agents in pods are given (it differs from the services' in most clusters).
    agent_nats_url: Annotated[str, msgspec.Meta(
        max_length=2048, pattern=r"^(nats|tls|ws|wss)://[^\s]+$",
        description="a NATS URL (nats://host:port)")] | None = None
    # A pod the scheduler cannot place fails its job after this long.
    pending_timeout_s: Annotated[float, msgspec.Meta(
        gt=0, le=24 * 3600.0,
        description="a number of seconds above 0, at most a day")] | None = None

    def __post_init__(self) -> None:
        if self.in_cluster and (self.kubeconfig or self.context):
            raise ValueError("give a kubeconfig (and context) or in_cluster, not both")
        reserved = [k for k in self.labels or {} if k.startswith(RESERVED_LABEL_PREFIX)]
        if reserved:
            raise ValueError(f"label {reserved[0]!r} is the platform's own: labels "
                             f"starting with {RESERVED_LABEL_PREFIX!r} cannot be set")


SETTINGS_BY_KIND: Mapping[str, type[ProviderSettings]] = {
    "local": LocalSettings,
    "docker": DockerSettings,
    "kubernetes": KubernetesSettings,
}

S = TypeVar("S", bound=ProviderSettings)


def settings_type(kind: str) -> type[ProviderSettings]:
    """The settings struct of a kind of provider (the common one for a kind without its own)."""
    return SETTINGS_BY_KIND.get(kind, ProviderSettings)


def setting_names(struct: type[ProviderSettings]) -> tuple[str, ...]:
    """The keys a kind's settings document may hold, sorted."""
    return tuple(sorted(struct.__struct_fields__))


def validate_settings(kind: str, raw: Mapping[str, object]) -> ProviderSettings:
    """A settings document an operator asks for, as its kind's struct.

    Raises :class:`ValidationError` with one line naming the first unknown key or bad value.
    """
    struct = settings_type(kind)
    names = setting_names(struct)
    for key in sorted(raw):
        if key not in names:
            raise ValidationError(f"{_quote(key)} is not a setting of {kind} providers "
                                  f"(they have: {', '.join(names)})")
    return _convert(struct, raw)


def load_settings(struct: type[S], raw: Mapping[str, object]) -> S:
    """A stored settings document as ``struct``: keys it does not have are ignored (written
    by another kind's or another build's writer); a bad value raises :class:`ValidationError`."""
    return _convert(struct, {k: v for k, v in raw.items() if k in struct.__struct_fields__})


def dump_settings(settings: ProviderSettings) -> dict[str, object]:
    """The document to store: the fields that are set, by name."""
    document: dict[str, object] = msgspec.to_builtins(settings)
    return document


def _convert(struct: type[S], raw: Mapping[str, object]) -> S:
    try:
        return msgspec.convert(dict(raw), struct)
    except msgspec.ValidationError as e:
        raise ValidationError(_explain(struct, raw, str(e))) from e


def _explain(struct: type[ProviderSettings], raw: Mapping[str, object], message: str) -> str:
    """msgspec's message about one field, as "NAME must be ... (got VALUE)"; a check of a
    whole value's parts (``__post_init__``) as "PATH: what is wrong"."""
    match = _AT_FIELD.search(message)
    if match is None:
        return message
    name = match.group("name")
    path = f"{name}{match.group('rest')}" if name else ""
    what = message[:match.start()].strip()
    if what.startswith(("Expected ", "Invalid ", "Object missing", "Object contains")):
        description = _description(struct, name)
        if description is not None and name is not None:
            return f"{name} must be {description} (got {_shown(raw.get(name))})"
    return f"{path}: {what}" if path else what


def _description(struct: type[ProviderSettings], name: str) -> str | None:
    info = msgspec.inspect.type_info(struct)
    fields = info.fields if isinstance(info, msgspec.inspect.StructType) else ()
    for field in fields:
        if field.name != name:
            continue
        for member in _members(field.type):
            extra = member.extra_json_schema if isinstance(member, msgspec.inspect.Metadata) \
                else None
            if extra and isinstance(extra.get("description"), str):
                return str(extra["description"])
    return None


def _members(t: msgspec.inspect.Type) -> tuple[msgspec.inspect.Type, ...]:
    return t.types if isinstance(t, msgspec.inspect.UnionType) else (t,)


def _quote(key: str) -> str:
    """A key for a one-line message: quoted, escaped and cut short."""
    return repr(key if len(key) <= _QUOTE_LIMIT else key[:_QUOTE_LIMIT] + "...")


def _shown(value: object) -> str:
    """A value as the caller wrote it (JSON), cut short."""
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        text = repr(value)
    return text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "..."
