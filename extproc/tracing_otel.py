"""The OpenTelemetry side of extproc.tracing; imported only when tracing is on (needs the `otel` extra).

A span per ext_proc stream (kind SERVER, named like gRPC's own spans) whose parent is the request's trace:
the `traceparent` in the stream's gRPC metadata when Envoy's own tracing is on (then the parent is Envoy's
span for its ext_proc call), else the one in the HTTP request headers Envoy forwards. A span per plugin call,
child of its stream's, made once the call is over from its measured duration, so that the call itself runs
exactly as without tracing. Propagation formats are OpenTelemetry's global ones (W3C trace context unless
OTEL_PROPAGATORS says otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any, Final
from urllib.parse import urlsplit

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from extproc import __version__, wire
from extproc.config import FailurePolicy, TracingConfig
from extproc.contract import PluginOutput
from extproc.errors import PluginCallError
from extproc.metrics import StreamEnd
from extproc.phases import Phase

_SERVICE: Final = ep.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name
STREAM_SPAN: Final = f"{_SERVICE}/Process"

# The stream span of the running stream's task (None: not traced, or not sampled), parent of its plugin calls.
_stream: ContextVar[Context | None] = ContextVar("extproc_trace_stream", default=None)


def otlp_provider(config: TracingConfig) -> TracerProvider:
    exporter: SpanExporter
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter = GrpcExporter(endpoint=config.endpoint, insecure=urlsplit(config.endpoint).scheme == "http")
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        exporter = HttpExporter(endpoint=config.endpoint)
    return provider_with(BatchSpanProcessor(exporter), config)


def provider_with(processor: SpanProcessor, config: TracingConfig) -> TracerProvider:
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES, so deployments can add their own attributes.
    resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    provider.add_span_processor(processor)
    return provider


class StreamTrace:
    """The span of one ext_proc stream, ended with how the stream ended."""

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def end(self, how: StreamEnd) -> None:
        self._span.set_attribute("extproc.stream_end", how.value)
        if how is StreamEnd.ERROR:
            self._span.set_status(Status(StatusCode.ERROR, "the server failed to process a message"))
        self._span.end()
        # Not a reset(token): grpcio may close an abandoned stream's generator on another thread.
        _stream.set(None)


class OtelTracer:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("extproc", __version__)

    def stream_started(self, first: ep.ProcessingRequest, context: grpc.aio.ServicerContext[Any, Any]) -> StreamTrace:
        """A span for the stream whose first message is `first`."""
        headers: dict[str, str] = {}
        if first.HasField("request_headers"):
            for name, value in wire.header_pairs(first.request_headers.headers):
                headers.setdefault(name, value)
        attributes: dict[str, str] = {"rpc.system": "grpc", "rpc.service": _SERVICE, "rpc.method": "Process"}
        if ":method" in headers:
            attributes["http.request.method"] = headers[":method"]
        if ":path" in headers:
            attributes["url.path"] = headers[":path"].partition("?")[0]  # the query may hold secrets
        parent = _parent(context.invocation_metadata(), headers)
        span = self._tracer.start_span(STREAM_SPAN, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        _stream.set(trace.set_span_in_context(span) if span.is_recording() else None)
        return StreamTrace(span)

    def plugin_called(self, plugin: str, export: Phase, seconds: float, output: PluginOutput | None) -> None:
        immediate = None if output is None else output.immediate
        attributes: dict[str, str | int] = {"extproc.outcome": "ok" if immediate is None else "immediate_response"}
        if immediate is not None:
            attributes["http.response.status_code"] = immediate.status
        self._plugin_span(plugin, export, seconds, attributes, None)

    def plugin_failed(
        self, plugin: str, export: Phase, seconds: float, error: PluginCallError, on_error: FailurePolicy
    ) -> None:
        attributes = {"extproc.outcome": error.kind.value, "extproc.on_error": on_error.value}
        self._plugin_span(plugin, export, seconds, attributes, Status(StatusCode.ERROR, str(error)))

    def _plugin_span(
        self, plugin: str, export: Phase, seconds: float, attributes: Mapping[str, str | int], status: Status | None
    ) -> None:
        parent = _stream.get()
        if parent is None:
            return  # a call outside a recorded stream
        end = time.time_ns()
        span = self._tracer.start_span(
            f"plugin {plugin} {export.value}",
            context=parent,
            start_time=end - round(seconds * 1e9),
            attributes={
                "extproc.plugin": plugin,
                "extproc.phase": export.value,
                "extproc.call_duration_ms": seconds * 1000,
                **attributes,
            },
        )
        if status is not None:
            span.set_status(status)
        span.end(end_time=end)


def _parent(metadata: Iterable[tuple[str, str | bytes]] | None, headers: Mapping[str, str]) -> Context:
    """Envoy's span for the ext_proc call when its tracing is on, else the request's own trace context."""
    if metadata:
        carrier = {key: value for key, value in metadata if isinstance(value, str)}  # bytes: "-bin" keys
        context = propagate.extract(carrier)
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    return propagate.extract(headers)
