"""W3C trace context across NATS: injected on every publish, continued in every handler.

An SDK tracer provider is always installed so trace ids exist and travel between services;
spans leave the process only when the standard ``OTEL_*`` variables name an exporter
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_TRACES_EXPORTER=otlp|console``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind

TRACER_NAME = "hodei"
# A proxy that follows whichever provider setup_tracing installs; looked up once, not per span.
_TRACER = trace.get_tracer(TRACER_NAME)


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


def setup_tracing(service_name: str) -> TracerProvider:
    """Install the process's tracer provider once; later calls return the installed one."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    name = os.environ.get("OTEL_SERVICE_NAME", f"hodei-{service_name}")
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    exporter = _exporter_from_env()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def shutdown_tracing() -> None:
    """Flush and stop exporting; safe when tracing was never set up."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def tracer() -> trace.Tracer:
    """Hodei's tracer."""
    return _TRACER


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Return ``headers`` with the current trace context (``traceparent``) added."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


@contextmanager
def continued_span(
    name: str,
    headers: Mapping[str, str] | None,
    *,
    kind: SpanKind = SpanKind.CONSUMER,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """Run a handler inside a span whose parent is the trace carried by ``headers``."""
    parent = propagate.extract(dict(headers or {}))
    token = context.attach(parent)
    try:
        with tracer().start_as_current_span(name, kind=kind, attributes=attributes) as span:
            yield span
    finally:
        context.detach(token)


def trace_id() -> str | None:
    """The current trace id (32 hex digits), so an audit row leads to its trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
