"""Tracing through a real Envoy whose own OpenTelemetry tracing is on (issue 19): Envoy and the server
report to one OTLP collector, and the server's spans are part of Envoy's trace of the request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extproc.tracing_otel import STREAM_SPAN
from support.plugins import scripted
from support.processes import wait_until
from tests.otlp_collector import otlp_grpc_collector

from .conftest import StackFactory
from .harness import request

pytestmark = pytest.mark.e2e


def test_the_servers_spans_hang_under_envoys_span_for_its_ext_proc_call(
    plugin_dir: Path, make_stack: StackFactory
) -> None:
    plugin = scripted(plugin_dir, process_request_headers={})
    with otlp_grpc_collector() as collector:
        config = {"tracing": {"endpoint": f"http://127.0.0.1:{collector.port}"}, "plugins": [plugin]}
        with make_stack(json.dumps(config), otlp_collector_port=collector.port) as stack:
            response = request("GET", f"{stack.url}/traced")
            assert response.status == 200
            wait_until(lambda: any(s.service == "envoy" for s in collector.spans()), 10, "Envoy's spans")
        # Stopping the stack stopped the server, which sends what it still holds before it exits.
        spans = collector.spans()
    envoy_spans = {s.span.span_id: s.span for s in spans if s.service == "envoy"}
    ours = {s.span.name: s.span for s in spans if s.service == "extproc"}
    assert set(ours) == {STREAM_SPAN, "plugin s process_request_headers"}, [s.span.name for s in spans]
    stream = ours[STREAM_SPAN]
    parent = envoy_spans.get(stream.parent_span_id)
    assert parent is not None, ("the stream span's parent is not one of Envoy's spans", spans)
    assert parent.name == "async envoy.service.ext_proc.v3.ExternalProcessor.Process egress"
    assert stream.trace_id == parent.trace_id
    assert ours["plugin s process_request_headers"].parent_span_id == stream.span_id
    # The upstream saw the same trace in the traceparent Envoy sent it.
    sent = dict(response.json()["headers"])["traceparent"]
    assert sent.split("-")[1] == stream.trace_id.hex()
