"""W3C trace context across NATS: injected on every publish, continued in every handler.

One trace per job: the api stores the submit's ``traceparent`` with the job, and every later
step (a dispatch pass, a sweep, a requeue, an event written by any of them) continues that
trace instead of starting its own; ``hodei_record_events`` gives each event of a job the
job's context when its writer was not already in that trace. The job, attempt and worker
travel as W3C baggage (``hodei.job_id``, ``hodei.attempt``, ``hodei.worker_id``) and every
span started under them carries them as attributes.

Each service has its own tracer provider, so its spans carry its own ``service.name`` even
when every service shares one process: :func:`use_service` makes the calling task (and the
tasks it starts) use that service's tracer. An SDK provider is always installed so trace ids
exist and travel between services; spans leave the process only when the standard ``OTEL_*``
variables name an exporter (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER=otlp|console``), and the
providers of one process then share one exporter.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from opentelemetry import baggage, context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "hodei"
# The baggage (and span attribute) names of what a span is about.
JOB_ID = "hodei.job_id"
ATTEMPT = "hodei.attempt"
WORKER_ID = "hodei.worker_id"
DESTINATION = "messaging.destination.name"
# Variables of a service's environment that tell an agent where its spans go: the
# provisioner passes these on to the agents it starts (never OTEL_EXPORTER_OTLP_HEADERS,
# which may hold a collector's credentials).
AGENT_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_TRACES_EXPORTER",
    "OTEL_BSP_SCHEDULE_DELAY",
)
# The job's context handed to an agent at start, so its registration joins the job's trace
# (the variable name OpenTelemetry's environment propagation uses).
ENV_TRACEPARENT = "TRACEPARENT"
ENV_BAGGAGE = "BAGGAGE"

# OpenTelemetry's own registry is process-wide; these follow it: one provider per service
# name, one exporter for them all, and the tracer of the service the running task serves.
_PROVIDERS: dict[str, TracerProvider] = {}
_EXPORT: list[SpanProcessor] = []
_SERVICE_TRACER: ContextVar[trace.Tracer | None] = ContextVar("hodei_tracer", default=None)
# A proxy that follows whichever provider is installed globally; looked up once.
_TRACER = trace.get_tracer(TRACER_NAME)
_TRACECONTEXT = TraceContextTextMapPropagator()


def _exporter_from_env() -> SpanExporter | None:
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind in ("otlp", "otlp_proto_http") or endpoint:
        # Imported lazily: the exporter pulls in requests/protobuf only when used.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return None


class _JobAttributes(SpanProcessor):
    """Copies the ``hodei.*`` baggage a span starts under onto the span, so every span of a
    job names it without each call site saying so."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        span.set_attributes({
            key: int(text) if key == ATTEMPT and text.isdigit() else text
            for key, text in ((k, str(v)) for k, v in baggage.get_all(parent_context).items())
            if key.startswith("hodei.")})

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _export() -> SpanProcessor | None:
    """The process's one export processor, made on first use; None without an exporter."""
    if not _EXPORT:
        exporter = _exporter_from_env()
        if exporter is None:
            return None
        _EXPORT.append(BatchSpanProcessor(exporter))
    return _EXPORT[0]


def setup_tracing(service_name: str) -> TracerProvider:
    """The tracer provider of service ``hodei-<service_name>``, made once per process; the
    first one made is also installed as the global provider."""
    name = f"hodei-{service_name}"
    if (provider := _PROVIDERS.get(name)) is not None:
        return provider
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}),
                              shutdown_on_exit=False)
    if (export := _export()) is not None:
        # Attributes nobody exports would be work for nothing.
        provider.add_span_processor(_JobAttributes())
        provider.add_span_processor(export)
    _PROVIDERS[name] = provider
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)
    return provider


def use_service(service_name: str) -> None:
    """Make the calling task, and every task it starts from now on, trace as
    ``hodei-<service_name>``."""
    _SERVICE_TRACER.set(setup_tracing(service_name).get_tracer(TRACER_NAME))


def shutdown_tracing() -> None:
    """Flush and stop exporting; safe when tracing was never set up."""
    for provider in _PROVIDERS.values():
        provider.shutdown()
    installed = trace.get_tracer_provider()
    if isinstance(installed, TracerProvider):
        installed.shutdown()
    # A service started again in this process (tests do) gets providers that export.
    _PROVIDERS.clear()
    _EXPORT.clear()


def tracer() -> trace.Tracer:
    """The tracer of the service the calling task serves (the global one outside any)."""
    return _SERVICE_TRACER.get() or _TRACER


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Return ``headers`` with the current trace context (``traceparent``, and the
    ``hodei.*`` baggage) added; written by hand for the reason :func:`extract` is."""
    carrier: dict[str, str] = dict(headers or {})
    _TRACECONTEXT.inject(carrier)
    if entries := ",".join(f"{key}={value}" for key, value in baggage.get_all().items()
                           if key.startswith("hodei.")):
        carrier["baggage"] = entries
    return carrier


def traceparent() -> str | None:
    """The current span's W3C ``traceparent``, to store with what it started (a job)."""
    return inject().get("traceparent")


def extract(headers: Mapping[str, str] | None) -> Context:
    """The context ``headers`` carry: their trace, and the ``hodei.*`` entries of their
    baggage (the only ones Hodei reads).

    Every message handled goes through here, so it is lean: the baggage Hodei writes holds
    ids and numbers only, which need no unescaping, and the general W3C baggage parser
    would cost more than the rest of a span together."""
    if not headers:
        return Context()
    ctx = _TRACECONTEXT.extract(headers)
    for item in headers.get("baggage", "").split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key.startswith("hodei.") and value:
            ctx = baggage.set_baggage(key, value.strip(), ctx)
    return ctx


def current_job() -> str | None:
    """The job whose trace the caller is in, as its baggage names it."""
    value = baggage.get_baggage(JOB_ID)
    return None if value is None else str(value)


def job_baggage(job_id: object, attempt: object = None, worker_id: object = None) -> str:
    """The ``baggage`` header naming a job, and its attempt and worker when known."""
    entries = [f"{JOB_ID}={job_id}"]
    if attempt is not None:
        entries.append(f"{ATTEMPT}={attempt}")
    if worker_id is not None:
        entries.append(f"{WORKER_ID}={worker_id}")
    return ",".join(entries)


def job_context(parent: str | None, job_id: UUID, *, attempt: int | None = None,
                worker_id: UUID | None = None) -> Context:
    """A context in job ``job_id``'s trace (``parent``: its stored ``traceparent``) that
    names the job, and its attempt and worker when known, as baggage."""
    ctx = _TRACECONTEXT.extract({"traceparent": parent}) if parent else context.get_current()
    ctx = baggage.set_baggage(JOB_ID, str(job_id), ctx)
    if attempt is not None:
        ctx = baggage.set_baggage(ATTEMPT, str(attempt), ctx)
    if worker_id is not None:
        ctx = baggage.set_baggage(WORKER_ID, str(worker_id), ctx)
    return ctx


@contextmanager
def job_span(name: str, parent: str | None, job_id: UUID, *, attempt: int | None = None,
             worker_id: UUID | None = None, kind: SpanKind = SpanKind.INTERNAL,
             attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """Run a step of job ``job_id`` (a loop's, a sweep's) as a span in the job's trace."""
    token = context.attach(job_context(parent, job_id, attempt=attempt, worker_id=worker_id))
    try:
        with tracer().start_as_current_span(name, kind=kind, attributes=attributes) as span:
            yield span
    finally:
        context.detach(token)


@contextmanager
def continued_span(
    name: str,
    headers: Mapping[str, str] | None,
    *,
    kind: SpanKind = SpanKind.CONSUMER,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """Run a handler inside a span whose parent is the trace carried by ``headers``."""
    token = context.attach(extract(headers))
    try:
        with tracer().start_as_current_span(name, kind=kind, attributes=attributes) as span:
            yield span
    finally:
        context.detach(token)


def message_span(operation: str, subject: str, headers: Mapping[str, str] | None, *,
                 kind: SpanKind = SpanKind.CONSUMER) -> contextlib.AbstractContextManager[Span]:
    """A span handling (or publishing) a message on ``subject``, continuing the trace its
    headers carry. Its name holds the subject with each id replaced by ``*``
    (``relay job.*.created``): span names stay few, as tracing backends expect, and the
    subject itself is the ``messaging.destination.name`` attribute."""
    return continued_span(f"{operation} {subject_template(subject)}", headers, kind=kind,
                          attributes={DESTINATION: subject})


def subject_template(subject: str) -> str:
    """``subject`` with every token that is a UUID (a job's, a worker's) replaced by ``*``."""
    return ".".join("*" if _is_uuid(token) else token for token in subject.split("."))


def _is_uuid(token: str) -> bool:
    if len(token) != 36:
        return False
    try:
        UUID(token)
    except ValueError:
        return False
    return True


@contextmanager
def environ_span(name: str, environ: Mapping[str, str]) -> Iterator[Span]:
    """Run a process's first step in the trace its starter handed it (``TRACEPARENT`` and
    ``BAGGAGE`` in ``environ``), or in a trace of its own without one."""
    headers = {key.lower(): environ[key] for key in (ENV_TRACEPARENT, ENV_BAGGAGE)
               if environ.get(key)}
    with continued_span(name, headers, kind=SpanKind.INTERNAL) as span:
        yield span


def environ_context() -> dict[str, str]:
    """The current trace context as the variables :func:`environ_span` reads."""
    carrier = inject()
    return {env: carrier[key] for env, key in ((ENV_TRACEPARENT, "traceparent"),
                                               (ENV_BAGGAGE, "baggage")) if key in carrier}


def trace_id_of(parent: str | None) -> str | None:
    """The trace id in a W3C ``traceparent`` (None without one)."""
    parts = (parent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def trace_id() -> str | None:
    """The current trace id (32 hex digits), so an audit row leads to its trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
