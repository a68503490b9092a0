"""OpenTelemetry tracing: W3C trace context propagated across every gRPC hop; spans are
exported only when an OTLP endpoint is configured."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

TRACER_NAME = "cxmesh"
TRACE_HEADER = "traceparent"
_exporting = False


def exporting() -> bool:
    """Whether spans are recorded and exported (an OTLP endpoint is configured)."""
    return _exporting


def configure_tracing(service: str, otlp_endpoint: str | None) -> None:
    global _exporting
    if not otlp_endpoint:
        return  # incoming trace context is still carried to the logs and onward calls
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"cxmesh-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    trace.set_tracer_provider(provider)
    _exporting = True


def extract_context(metadata: Mapping[str, str]) -> otel_context.Context:
    return propagate.extract(carrier=dict(metadata))


def inject_metadata() -> list[tuple[str, str]]:
    """The current trace context as gRPC metadata, for outgoing calls."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)
