"""Streamed bodies, trailers, state across phases and route values through a real Envoy."""

from __future__ import annotations

import http.client
import json
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from scripts import sdk_build
from support.plugins import scripted
from support.processes import free_port
from tests.examples_build import example_wasm

from .conftest import StackFactory
from .harness import Stack, request
from .test_core import config_yaml, plugin
from .upstream import BULK_EVENTS_PREFIX, HELD_EVENTS, HELD_EVENTS_PATH, RELEASE_PATH

pytestmark = pytest.mark.e2e

SSE_REDACT = {"prefixes": ["sk-", "ghp_"], "replacement": "[redacted]"}
MIB = 1024 * 1024


def sse_redact(**fields: Any) -> dict[str, Any]:
    return plugin("sse-redact", example_wasm("sse-redact"), config=SSE_REDACT, memory_limit_mb=64, **fields)


def body_digest() -> dict[str, Any]:
    return plugin("body-digest", example_wasm("body-digest"), config={"header": "x-request-digest"})


def fnv1a64(data: bytes) -> str:
    digest = 0xCBF29CE484222325
    for byte in data:
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"fnv1a64:{digest:016x}"


def read_event(response: http.client.HTTPResponse) -> bytes:
    """One server-sent event, read off the wire up to its blank line."""
    event = b""
    while not event.endswith(b"\n\n"):
        line = response.readline()
        if not line:
            raise AssertionError(f"the stream ended inside an event: {event!r}")
        event += line
    return event


@pytest.mark.parametrize("body_mode", ["STREAMED", "FULL_DUPLEX_STREAMED"])
def test_event_stream_first_event_reaches_the_client_while_the_upstream_still_sends(
    make_stack: StackFactory, body_mode: str
) -> None:
    """The upstream holds back its second event until the client has the first, redacted: so the first
    event crossed Envoy, the server and the plugin while the upstream was still sending."""
    stream_id = uuid.uuid4().hex
    with make_stack(config_yaml(sse_redact()), response_body_mode=body_mode) as stack:
        connection = http.client.HTTPConnection("127.0.0.1", stack.listen_port, timeout=30)
        try:
            connection.request("GET", f"{HELD_EVENTS_PATH}?id={stream_id}")
            response = connection.getresponse()
            assert response.status == 200
            first = read_event(response)
            # Only now may the upstream go on.
            assert request("GET", f"http://127.0.0.1:{stack.upstream_port}{RELEASE_PATH}?id={stream_id}").status == 200
            rest = response.read()
        finally:
            connection.close()
    assert first == b"data: first [redacted]\n\n"
    assert rest == b"data: second [redacted]\n\n"
    assert HELD_EVENTS[0] != first  # the upstream's event did hold a secret


def test_event_stream_under_full_duplex_passes_bodies_no_plugin_reads(make_stack: StackFactory) -> None:
    """Under FULL_DUPLEX_STREAMED the server keeps every stream to its end and sends unread bodies back as
    they came: ending the stream or switching the mode would lose the first chunk (Envoy 1.40)."""
    redact = sse_redact(match={"path_prefix": "/redacted"})
    with make_stack(config_yaml(redact), response_body_mode="FULL_DUPLEX_STREAMED") as stack:
        unread = request("GET", f"{stack.url}{BULK_EVENTS_PREFIX}200000")
        read = request("GET", f"{stack.url}/redacted{BULK_EVENTS_PREFIX}200000")
    assert unread.status == 200 and len(unread.body) == 200000
    assert b"sk-key" in unread.body
    assert read.status == 200 and b"sk-key" not in read.body and b"[redacted]" in read.body


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _stream_events(stack: Stack, size: int) -> tuple[int, int]:
    """GET an event stream of `size` bytes through Envoy; the bytes received and how many were redacted."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.listen_port, timeout=120)
    received = redacted = 0
    try:
        connection.request("GET", f"{BULK_EVENTS_PREFIX}{size}")
        response = connection.getresponse()
        assert response.status == 200
        marker = b"[redacted]"
        tail = b""  # the end of the previous read, where a marker may begin
        while piece := response.read(256 * 1024):
            received += len(piece)
            window = tail + piece
            redacted += window.count(marker)
            tail = window[-(len(marker) - 1) :]
    finally:
        connection.close()
    return received, redacted


def test_event_stream_of_50_mib_through_a_chunk_plugin_keeps_the_server_rss_flat(make_stack: StackFactory) -> None:
    """A chunk is at most about Envoy's buffer limit (64 KiB here, as a streaming deployment sets it): the
    server holds one chunk at a time, whatever the body's length."""
    settings = {"response_body_mode": "STREAMED", "buffer_limit_bytes": 64 * 1024}
    # A generous timeout: other jobs share this machine, and one late chunk would reset the stream.
    with make_stack(config_yaml(sse_redact(timeout_ms=5000)), **settings) as stack:
        pid = stack.server.pid
        assert pid is not None
        _stream_events(stack, MIB)  # warm-up: plugin instances, buffers, allocator arenas
        before = _rss_bytes(pid)
        peak = before
        finished = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not finished.wait(0.05):
                peak = max(peak, _rss_bytes(pid))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            received, redacted = _stream_events(stack, 50 * MIB)
        finally:
            finished.set()
            watcher.join()
        peak = max(peak, _rss_bytes(pid))
    # Each bulk event carries one secret; "[redacted]" is 4 bytes longer than "sk-key".
    assert redacted > 50_000
    assert received == 50 * MIB + 4 * redacted
    assert peak - before < 10 * MIB, f"server RSS grew by {(peak - before) / MIB:.1f} MiB streaming 50 MiB"


def test_exchange_state_carries_a_streamed_request_body_digest_to_the_response(make_stack: StackFactory) -> None:
    body = b"hello streamed world " * 50_000  # about 1 MiB: many chunks
    with make_stack(config_yaml(body_digest())) as stack:
        response = request("POST", f"{stack.url}/echo", body=body)
    assert response.status == 200
    assert json.loads(response.body)["body_length"] == len(body)
    assert response.header("x-request-digest") == fnv1a64(body)


def test_exchange_state_from_request_headers_reaches_response_headers(
    plugin_dir: Path, make_stack: StackFactory
) -> None:
    stream = plugin("stream", plugin_dir / "stream.wasm", execution_points=["request_headers", "response_headers"])
    with make_stack(config_yaml(stream)) as stack:
        response = request("GET", f"{stack.url}/echo")
    assert response.header("x-state") == "h"


@pytest.fixture
def grpc_upstream() -> Iterator[int]:
    """A gRPC server (grpc.health.v1) for Envoy to route to: its answers end with grpc-status in trailers."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    yield port
    server.stop(None)


def _check(stack: Stack, service: str = "") -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
    """A health Check through Envoy: the response, the initial metadata and the trailing metadata."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.listen_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply, call = stub.Check.with_call(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return reply, tuple(call.initial_metadata()), tuple(call.trailing_metadata())


def test_plugin_trailers_of_a_grpc_upstream_reach_plugins_and_change(
    plugin_dir: Path, make_stack: StackFactory, grpc_upstream: int
) -> None:
    stream = plugin("stream", plugin_dir / "stream.wasm", execution_points=["request_headers", "response_trailers"])
    with make_stack(config_yaml(stream, body_digest()), upstream_port=grpc_upstream, upstream_http2=True) as stack:
        reply, initial, trailing = _check(stack)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    trailers = dict(trailing)
    # The plugin saw grpc-status among the trailers, and its changes reached the client.
    assert trailers["x-seen-grpc-status"] == "0"
    assert trailers["x-state"] == "h"
    # body-digest streamed the request message and put its digest in the response headers and trailers.
    message = health_pb2.HealthCheckRequest().SerializeToString()
    digest = fnv1a64(b"\0" + len(message).to_bytes(4, "big") + message)  # gRPC's length-prefixed framing
    assert dict(initial)["x-request-digest"] == digest
    assert trailers["x-request-digest"] == digest


def test_plugin_trailers_immediate_response_on_grpc_carries_the_grpc_status(
    plugin_dir: Path, make_stack: StackFactory, grpc_upstream: int
) -> None:
    deny = scripted(plugin_dir, "deny", generate_response={"immediate_response": {"status": 403, "details": "no"}})
    with (
        make_stack(config_yaml(deny), upstream_port=grpc_upstream, upstream_http2=True) as stack,
        pytest.raises(grpc.RpcError) as raised,
    ):
        _check(stack)
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_route_metadata_reaches_plugins_as_route_values(plugin_dir: Path, make_stack: StackFactory) -> None:
    values = {"extproc": {"echo": {"tier": "gold", "rps": 5}, "someone-else": {"x": 1}}}
    with make_stack(config_yaml(plugin("echo", plugin_dir / "echo.wasm")), route_metadata=values) as stack:
        response = request("GET", f"{stack.url}/anything")
    seen = json.loads(response.body)
    assert seen["route"] == {"tier": "gold", "rps": 5}


each_sdk = pytest.mark.parametrize("language", ["rust", "c"], ids=["rust_sdk", "c_sdk"])


def sdk_stream_probe(language: str, *phases: str) -> dict[str, Any]:
    """The SDK's stream probe (sdk/rust/stream-probe, sdk/c/tests/stream_probe.c), declaring `phases`."""
    return plugin("probe", sdk_build.probe_wasm(language, "stream"), config={"phases": list(phases)})


@each_sdk
def test_sdk_chunks_and_state_of_a_streamed_body_through_envoy(make_stack: StackFactory, language: str) -> None:
    # About 1 MiB: one chunk or several, as Envoy happens to read it (so the marks are counted, not assumed).
    body = b"hello streamed world " * 50_000
    probe = sdk_stream_probe(language, "request_headers", "request_body_chunk", "response_headers")
    with make_stack(config_yaml(probe)) as stack:
        response = request("POST", f"{stack.url}/echo", body=body)
    assert response.status == 200
    received = json.loads(response.body)["body"].encode()
    # Each chunk reached the upstream marked with its index (the last with $) and upper-cased.
    marks = re.findall(rb"<(\d+)(\$?)>", received)
    assert [int(index) for index, _ in marks] == list(range(len(marks)))
    assert [last for _, last in marks] == [b""] * (len(marks) - 1) + [b"$"]
    assert re.sub(rb"<\d+\$?>", b"", received) == body.upper()
    # The state went from the request headers through every chunk to the response headers.
    assert response.header("x-state") == "h" + "".join(index.decode() for index, _ in marks)


@each_sdk
def test_sdk_trailers_of_a_grpc_upstream_through_envoy(
    make_stack: StackFactory, grpc_upstream: int, language: str
) -> None:
    probe = sdk_stream_probe(language, "request_headers", "response_trailers")
    with make_stack(config_yaml(probe), upstream_port=grpc_upstream, upstream_http2=True) as stack:
        reply, _, trailing = _check(stack)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    trailers = dict(trailing)
    assert trailers["x-seen-grpc-status"] == "0"
    assert trailers["x-state"] == "h"
