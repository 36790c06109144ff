"""OpenTelemetry tracing (issue 19): the `tracing` config section, spans per stream and per plugin call
joined to the request's trace, OTLP export over gRPC and HTTP, and nothing at all while it is off."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from extproc import tracing
from extproc.config import ConfigError, TracingConfig, parse_config
from extproc.config import parse as config_module
from extproc.tracing_otel import STREAM_SPAN, provider_with
from support.plugins import scripted
from tests.otlp_collector import ExportedSpan, otlp_grpc_collector, spans_of
from tests.test_grpc_stream import REQUEST, connect, exchange, headers

__all__ = ["connect"]  # the fixture, imported so pytest finds it

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
ENVOY_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
ENVOY_SPAN_ID = "b7ad6b7169203331"


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> tuple[str, str]:
    return "traceparent", f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def load(tracing_section: object, tmp_path: Path) -> TracingConfig | None:
    return parse_config({"plugins": [], "tracing": tracing_section}, tmp_path / "extproc.yaml").tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, into memory; `sample_ratio` 1 (every trace that starts here is kept)."""
    exporter = InMemorySpanExporter()
    tracing.install(provider_with(SimpleSpanProcessor(exporter), TracingConfig(endpoint="http://unused:4317")))
    try:
        yield exporter
    finally:
        tracing.stop()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    found = {span.name: span for span in exporter.get_finished_spans()}
    assert len(found) == len(exporter.get_finished_spans()), "span names repeat"
    return found


# --- config -----------------------------------------------------------------------------------------


def test_defaults_and_every_key(tmp_path: Path) -> None:
    assert load({"endpoint": "http://collector:4317"}, tmp_path) == TracingConfig(endpoint="http://collector:4317")
    full = {"endpoint": "https://otel.example", "protocol": "http/protobuf", "service_name": "edge", "sample_ratio": 0}
    assert load(full, tmp_path) == TracingConfig(
        endpoint="https://otel.example/v1/traces", protocol="http/protobuf", service_name="edge", sample_ratio=0.0
    )
    assert parse_config({"plugins": []}, tmp_path / "extproc.yaml").tracing is None


@pytest.mark.parametrize(
    ("section", "key", "reason"),
    [
        ({}, "tracing.endpoint", "required key is missing"),
        ({"endpoint": "collector:4317"}, "tracing.endpoint", "must be an http:// or https:// URL"),
        ({"endpoint": "http://collector:4317/v1/traces"}, "tracing.endpoint", "OTLP/gRPC endpoint has no path"),
        ({"endpoint": "http://u:secret@collector:99999"}, "tracing.endpoint", r"invalid URL 'http://u:\*\*\*@"),
        ({"endpoint": "http://c:4317", "protocol": "http"}, "tracing.protocol", "one of grpc, http/protobuf"),
        ({"endpoint": "http://c:4317", "sample_ratio": 1.5}, "tracing.sample_ratio", "from 0 to 1, got 1.5"),
        ({"endpoint": "http://c:4317", "sample_ratio": True}, "tracing.sample_ratio", "from 0 to 1"),
        ({"endpoint": "http://c:4317", "service_name": ""}, "tracing.service_name", "must not be empty"),
        ({"endpoint": "http://c:4317", "sampler": 1}, "tracing.sampler", "did you mean 'sample_ratio'"),
    ],
    ids=[
        "no-endpoint",
        "no-scheme",
        "grpc-with-path",
        "bad-port-redacted",
        "bad-protocol",
        "ratio-over-1",
        "ratio-bool",
        "empty-service-name",
        "misspelled-key",
    ],
)
def test_errors_name_the_key(section: dict[str, Any], key: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        load(section, tmp_path)
    assert caught.value.key == key
    assert "secret" not in str(caught.value)


def test_without_the_otel_extra_the_section_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "_importable", lambda module: not module.startswith("opentelemetry.exporter"))
    with pytest.raises(ConfigError, match=r"pip install 'extism-extproc\[otel\]'") as caught:
        load({"endpoint": "http://collector:4317"}, tmp_path)
    assert caught.value.key == "tracing"


# --- off --------------------------------------------------------------------------------------------


def test_off_the_server_imports_no_opentelemetry() -> None:
    # xds-protos ships the opentelemetry.proto messages, so only the API and SDK tell that tracing was loaded.
    probe = (
        "import sys\n"
        "import extproc.cli, extproc.server, extproc.service, extproc.chain\n"
        "from extproc import tracing\n"
        "assert tracing.tracer is None\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.trace', 'opentelemetry.sdk'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- spans ------------------------------------------------------------------------------------------


def test_stream_and_plugin_spans_join_the_request_trace(
    connect: Any, plugin_dir: Path, spans: InMemorySpanExporter
) -> None:
    trap = {"name": "trap", "path": str(plugin_dir / "trap.wasm"), "on_error": "fail_open"}
    answer = scripted(plugin_dir, process_request_headers={"immediate_response": {"status": 418}})
    stub = connect(scripted(plugin_dir, process_request_headers={}) | {"name": "pass"}, trap, answer)
    [reply] = exchange(stub, headers(*REQUEST, traceparent(TRACE_ID, PARENT_ID)))
    assert reply.immediate_response.status.code == 418

    found = by_name(spans)
    stream = found.pop(STREAM_SPAN)
    assert stream.kind is SpanKind.SERVER
    assert stream.context is not None and stream.parent is not None
    assert f"{stream.context.trace_id:032x}" == TRACE_ID
    assert f"{stream.parent.span_id:016x}" == PARENT_ID and stream.parent.is_remote
    assert dict(stream.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "envoy.service.ext_proc.v3.ExternalProcessor",
        "rpc.method": "Process",
        "http.request.method": "POST",
        "url.path": "/p",
        "extproc.stream_end": "done",
    }
    assert stream.resource.attributes["service.name"] == "extproc"

    names = ["plugin pass process_request_headers", "plugin trap process_request_headers"]
    names.append("plugin s process_request_headers")
    assert sorted(found) == sorted(names)
    for span in found.values():
        assert span.parent is not None and span.parent.span_id == stream.context.span_id
        assert span.context is not None and span.context.trace_id == stream.context.trace_id
        assert span.start_time is not None and span.end_time is not None and stream.start_time is not None
        assert stream.start_time <= span.start_time <= span.end_time
        attributes = span.attributes or {}
        assert attributes["extproc.phase"] == "process_request_headers"
        assert attributes["extproc.call_duration_ms"] == pytest.approx((span.end_time - span.start_time) / 1e6)

    passed = found[names[0]].attributes or {}
    assert (passed["extproc.plugin"], passed["extproc.outcome"]) == ("pass", "ok")
    assert found[names[0]].status.status_code is StatusCode.UNSET
    trapped = found[names[1]]
    assert dict(trapped.attributes or {}) | {"extproc.call_duration_ms": 0} == {
        "extproc.plugin": "trap",
        "extproc.phase": "process_request_headers",
        "extproc.outcome": "trap",
        "extproc.on_error": "fail_open",
        "extproc.call_duration_ms": 0,
    }
    assert trapped.status.status_code is StatusCode.ERROR
    assert "plugin 'trap' process_request_headers: trap" in (trapped.status.description or "")
    answered = found[names[2]].attributes or {}
    assert (answered["extproc.outcome"], answered["http.response.status_code"]) == ("immediate_response", 418)


def test_envoys_own_span_in_the_grpc_metadata_is_the_parent(
    connect: Any, plugin_dir: Path, spans: InMemorySpanExporter
) -> None:
    stub = connect(scripted(plugin_dir, process_request_headers={}))
    requests = iter([headers(*REQUEST, traceparent(TRACE_ID, PARENT_ID))])
    list(stub.Process(requests, timeout=10, metadata=[traceparent(ENVOY_TRACE_ID, ENVOY_SPAN_ID)]))
    stream = by_name(spans)[STREAM_SPAN]
    assert stream.context is not None and stream.parent is not None
    assert (f"{stream.context.trace_id:032x}", f"{stream.parent.span_id:016x}") == (ENVOY_TRACE_ID, ENVOY_SPAN_ID)


def test_a_request_its_trace_did_not_sample_records_nothing(
    connect: Any, plugin_dir: Path, spans: InMemorySpanExporter
) -> None:
    stub = connect(scripted(plugin_dir, process_request_headers={}))
    exchange(stub, headers(*REQUEST, traceparent(TRACE_ID, PARENT_ID, sampled=False)))
    assert spans.get_finished_spans() == ()


def test_without_a_traceparent_a_trace_starts_here(connect: Any, plugin_dir: Path, spans: InMemorySpanExporter) -> None:
    stub = connect(scripted(plugin_dir, process_request_headers={}))
    exchange(stub, headers(*REQUEST))
    found = by_name(spans)
    assert found[STREAM_SPAN].parent is None
    assert len(found) == 2


def test_a_stream_no_plugin_matches_has_its_span_only(
    connect: Any, plugin_dir: Path, spans: InMemorySpanExporter
) -> None:
    plugin = scripted(plugin_dir, process_request_headers={}) | {"match": {"path_prefix": "/other"}}
    exchange(connect(plugin), headers(*REQUEST))
    assert list(by_name(spans)) == [STREAM_SPAN]


# --- OTLP export ------------------------------------------------------------------------------------


def exported_names(exported: list[ExportedSpan]) -> list[tuple[str, str]]:
    """(service.name, span name) in the order the spans began."""
    return [(s.service, s.span.name) for s in sorted(exported, key=lambda s: s.span.start_time_unix_nano)]


def run_one_traced_stream(config: TracingConfig, connect: Any, plugin_dir: Path) -> None:
    tracing.start(config)
    try:
        exchange(connect(scripted(plugin_dir, process_request_headers={})), headers(*REQUEST))
    finally:
        tracing.stop()  # flushes the batch


def test_otlp_grpc_export(connect: Any, plugin_dir: Path) -> None:
    with otlp_grpc_collector() as collector:
        run_one_traced_stream(
            TracingConfig(f"http://127.0.0.1:{collector.port}", service_name="grpc"), connect, plugin_dir
        )
        exported = collector.spans()
    assert exported_names(exported) == [("grpc", STREAM_SPAN), ("grpc", "plugin s process_request_headers")]


def test_otlp_http_export(connect: Any, plugin_dir: Path) -> None:
    received: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append((self.path, self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        section = {"endpoint": f"http://127.0.0.1:{server.server_port}", "protocol": "http/protobuf"}
        config = load(section | {"service_name": "http"}, Path("/nonexistent"))
        assert config is not None
        run_one_traced_stream(config, connect, plugin_dir)
    finally:
        server.shutdown()
        thread.join()
    assert {path for path, _ in received} == {"/v1/traces"}
    exported = spans_of([trace_service_pb2.ExportTraceServiceRequest.FromString(body) for _, body in received])
    assert exported_names(exported) == [("http", STREAM_SPAN), ("http", "plugin s process_request_headers")]


def test_otlp_protos_overwritten_by_xds_protos_are_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.proto.common.v1 import common_pb2

    # What xds-protos' older copy of the file lacks.
    monkeypatch.delattr(common_pb2, "InstrumentationScope")
    with pytest.raises(ConfigError) as info:
        parse_config({"plugins": [], "tracing": {"endpoint": "http://127.0.0.1:4317"}}, Path("/tmp/extproc.yaml"))
    assert info.value.key == "tracing"
    assert "pip install --force-reinstall --no-deps opentelemetry-proto" in info.value.reason
