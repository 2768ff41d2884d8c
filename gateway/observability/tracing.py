"""OpenTelemetry traces, on with MOE_OTEL=true; when off, nothing here is called.

The FastAPI instrumentation makes each HTTP request's server span. The gateway's own spans, one for
routing and one per expert call, are made from the finished decision record instead of around the
code doing the work: serving code carries no tracing, a streamed call's span covers the whole
stream rather than its first chunk, and a span says exactly what the record says. No span carries
prompt text, and no request header is recorded unless an operator asks the instrumentation to.

Where spans go is the SDK's business, through its standard variables: OTEL_EXPORTER_OTLP_ENDPOINT
(and _TRACES_ENDPOINT, _HEADERS, _TIMEOUT), OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_BSP_*.
"""

from __future__ import annotations

import os
import time
from datetime import datetime

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.environment_variables import OTEL_SERVICE_NAME
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from gateway.decisions.record import DecisionRecord

# Probes and scrapes would drown the traces of real requests.
_UNTRACED_URLS = "/healthz,/readyz,/metrics"


class RequestTracer:
    """Turns each finished decision record into spans under the request's server span."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("moe-gateway")

    def record(self, record: DecisionRecord) -> None:
        common: dict[str, AttributeValue] = {"moe.decision_id": record.id, "moe.requested_model": record.requested_model}
        if record.virtual_model:
            common["moe.virtual_model"] = record.virtual_model
        if record.router:
            common["moe.router"] = f"{record.router}@{record.router_version}"
        server = trace.get_current_span()
        if server.is_recording():  # a stream the client left may finish after its server span ended
            server.set_attributes({**common, "moe.expert": record.chosen_expert or "", "moe.status": record.status})
        if record.routing_ms is not None:
            # Routing ends where the first expert call starts (give or take a breaker lookup).
            end = _ns(record.calls[0].started_at) if record.calls else time.time_ns()
            ranked = [r["expert"] for r in record.ranked]
            span = self._tracer.start_span("moe.route", start_time=end - _ms_to_ns(record.routing_ms),
                                           attributes={**common, "moe.ranked": ranked})
            span.end(end_time=end)
        for call in record.calls:
            start = _ns(call.started_at)
            span = self._tracer.start_span(
                "moe.expert_call", kind=SpanKind.CLIENT, start_time=start,
                attributes={**common, "moe.expert": call.expert, "moe.attempt": call.attempt, "moe.status": call.status},
            )
            if call.status != "ok":
                span.set_status(Status(StatusCode.ERROR, call.status))
            span.end(end_time=start + _ms_to_ns(call.latency_ms or 0.0))

    def shutdown(self) -> None:
        """Export what is still queued (blocking: up to the exporter's timeout)."""
        self.provider.shutdown()


def install(app: FastAPI, exporter: SpanExporter | None = None) -> RequestTracer:
    """Instrument `app` and return the tracer for decision records; `exporter` defaults to OTLP over HTTP."""
    # The standard variable names the service when set; otherwise the SDK would say "unknown_service".
    resource = Resource.create({SERVICE_NAME: os.environ.get(OTEL_SERVICE_NAME, "moe-gateway")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
    # Without exclude_spans every streamed chunk would be a span of its own.
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=_UNTRACED_URLS,
                                       exclude_spans=["receive", "send"])
    return RequestTracer(provider)


def _ns(moment: datetime) -> int:
    return round(moment.timestamp() * 1e9)


def _ms_to_ns(ms: float) -> int:
    return round(ms * 1e6)
