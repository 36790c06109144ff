"""The ext_proc stream state machine over a real gRPC channel (no Envoy)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc.config import parse_config
from extproc.metrics import REGISTRY
from extproc.server import Server
from support.plugins import scripted
from support.processes import wait_until

Stub = Any


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []
    channels: list[grpc.Channel] = []

    def start(*plugins: dict[str, Any], client_options: list[tuple[str, Any]] | None = None, **server: Any) -> Stub:
        config = parse_config({"server": server, "plugins": list(plugins)}, tmp_path / "extproc.yaml")
        running = Server(config, "127.0.0.1", 0)
        running.start()
        servers.append(running)
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}", options=client_options)
        channels.append(channel)
        return ep_grpc.ExternalProcessorStub(channel)

    yield start
    for channel in channels:
        channel.close()
    for running in servers:
        running.stop(0)


def metric_value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def headers(*pairs: tuple[str, str], end_of_stream: bool = False, **kwargs: Any) -> ep.ProcessingRequest:
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs],
    )
    return ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(headers=header_map, end_of_stream=end_of_stream), **kwargs
    )


def body(data: bytes, end_of_stream: bool) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(request_body=ep.HttpBody(body=data, end_of_stream=end_of_stream))


REQUEST = ((":method", "POST"), (":path", "/p"), (":authority", "example.com"), (":scheme", "http"))


def exchange(stub: Stub, *requests: ep.ProcessingRequest) -> list[ep.ProcessingResponse]:
    return list(stub.Process(iter(requests), timeout=10))


def test_unmatched_request_skips_every_later_phase(connect: Any, plugin_dir: Path) -> None:
    plugin = scripted(plugin_dir, process_request_headers={}, process_response_body={})
    plugin["match"] = {"path_prefix": "/only"}
    [reply] = exchange(connect(plugin), headers(*REQUEST))
    assert reply.HasField("request_headers")
    assert not reply.request_headers.response.HasField("header_mutation")
    mode = reply.mode_override
    assert mode.request_body_mode == ProcessingMode.NONE
    assert mode.response_header_mode == ProcessingMode.SKIP
    assert mode.response_body_mode == ProcessingMode.NONE


def test_header_mutation_and_route_cache(connect: Any, plugin_dir: Path) -> None:
    output = {"headers": {"set": [{"name": ":path", "value": "/new"}], "append": [{"name": "x-a", "value": "1"}]}}
    [reply] = exchange(connect(scripted(plugin_dir, process_request_headers=output)), headers(*REQUEST))
    common = reply.request_headers.response
    assert common.clear_route_cache
    options = {(o.header.key, o.header.raw_value, o.append.value) for o in common.header_mutation.set_headers}
    assert options == {(":path", b"/new", False), ("x-a", b"1", False)}
    assert reply.mode_override.response_header_mode == ProcessingMode.SKIP


def test_buffered_body_rewrite_fixes_content_length(connect: Any, plugin_dir: Path) -> None:
    plugin = {"name": "t", "path": str(plugin_dir / "transform.wasm"), "config": {"suffix": "!!"}}
    plugin["execution_points"] = ["request_body"]
    first, second = exchange(
        connect(plugin), headers(*REQUEST, ("content-length", "5")), body(b"hello", end_of_stream=True)
    )
    assert first.mode_override.request_body_mode == ProcessingMode.BUFFERED
    common = second.request_body.response
    assert common.body_mutation.body == b"hello!!"
    assert [(o.header.key, o.header.raw_value) for o in common.header_mutation.set_headers] == [
        ("content-length", b"7")
    ]


def test_streamed_body_is_held_then_sent_whole(connect: Any, plugin_dir: Path) -> None:
    """Envoy configured STREAMED (it says so in protocol_config): chunks are held for the whole-body plugin."""
    plugin = {"name": "t", "path": str(plugin_dir / "transform.wasm"), "config": {"suffix": "!"}}
    plugin["execution_points"] = ["request_body"]
    streamed = ep.ProtocolConfiguration(request_body_mode=ProcessingMode.STREAMED)
    replies = exchange(
        connect(plugin),
        headers(*REQUEST, protocol_config=streamed),
        body(b"ab", end_of_stream=False),
        body(b"cd", end_of_stream=False),
        body(b"ef", end_of_stream=True),
    )
    assert [r.request_body.response.body_mutation.clear_body for r in replies[1:3]] == [True, True]
    assert replies[3].request_body.response.body_mutation.body == b"abcdef!"
    # Headers already left Envoy in streamed mode, so no header mutation rides on the body.
    assert not replies[3].request_body.response.HasField("header_mutation")


def test_buffered_partial_overflow_passes_through(connect: Any, plugin_dir: Path) -> None:
    plugin = {"name": "t", "path": str(plugin_dir / "transform.wasm"), "config": {"suffix": "!"}}
    partial = ep.ProtocolConfiguration(request_body_mode=ProcessingMode.BUFFERED_PARTIAL)
    replies = exchange(connect(plugin), headers(*REQUEST, protocol_config=partial), body(b"abc", end_of_stream=False))
    assert not replies[1].request_body.response.HasField("body_mutation")


@pytest.mark.parametrize(
    "chunks", [[b"too long"], [b"too", b" long"]], ids=["buffered", "streamed-grows-past-the-limit"]
)
def test_a_request_body_over_the_limit_is_413(connect: Any, plugin_dir: Path, chunks: list[bytes]) -> None:
    plugin = {"name": "t", "path": str(plugin_dir / "transform.wasm"), "execution_points": ["request_body"]}
    messages = [body(chunk, end_of_stream=i == len(chunks) - 1) for i, chunk in enumerate(chunks)]
    # Chunks come only when Envoy is configured to stream, and it says so.
    mode = ProcessingMode.STREAMED if len(chunks) > 1 else ProcessingMode.BUFFERED
    config = ep.ProtocolConfiguration(request_body_mode=mode)
    replies = exchange(connect(plugin, max_body_bytes=4), headers(*REQUEST, protocol_config=config), *messages)
    assert replies[-1].immediate_response.status.code == 413
    assert replies[-1].immediate_response.details == "extproc_body_too_large"


def response_body(data: bytes) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(response_body=ep.HttpBody(body=data, end_of_stream=True))


def response_headers() -> ep.ProcessingRequest:
    header_map = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")])
    return ep.ProcessingRequest(response_headers=ep.HttpHeaders(headers=header_map))


@pytest.mark.parametrize(("on_error", "status"), [("fail_closed", 502), ("fail_open", None)])
def test_a_response_body_over_the_limit_fails_for_its_plugins(
    connect: Any, plugin_dir: Path, on_error: str, status: int | None
) -> None:
    plugin = {"name": "t", "path": str(plugin_dir / "transform.wasm"), "config": {"prefix": "!"}}
    plugin |= {"execution_points": ["response_body"], "on_error": on_error}
    stub = connect(plugin, max_body_bytes=4)
    replies = exchange(stub, headers(*REQUEST, end_of_stream=True), response_headers(), response_body(b"too long"))
    last = replies[-1]
    if status is None:  # every body plugin is fail_open: the body passes as it came
        assert last.HasField("response_body") and not last.response_body.response.HasField("body_mutation")
    else:
        assert last.immediate_response.status.code == status
        assert last.immediate_response.details == "extproc_response_body_too_large"


@pytest.mark.parametrize(("status", "grpc_status"), [(403, 7), (429, 14), (200, 0), (418, 2)])
def test_grpc_request_gets_grpc_status(connect: Any, plugin_dir: Path, status: int, grpc_status: int) -> None:
    output = {"immediate_response": {"status": status}}
    stub = connect(scripted(plugin_dir, process_request_headers=output))
    [reply] = exchange(stub, headers(*REQUEST, ("content-type", "application/grpc")))
    assert reply.immediate_response.status.code == status
    assert reply.immediate_response.grpc_status.status == grpc_status


@pytest.mark.parametrize("plugin_name", ["trap", "garbage"])
def test_failing_plugin_answers_503(connect: Any, plugin_dir: Path, plugin_name: str) -> None:
    stub = connect({"name": plugin_name, "path": str(plugin_dir / f"{plugin_name}.wasm")})
    [reply] = exchange(stub, headers(*REQUEST))
    assert reply.immediate_response.status.code == 503
    assert b"plugin" not in reply.immediate_response.body.lower()


RESPONSE_HEADERS = ep.ProcessingRequest(
    response_headers=ep.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")])
    )
)
RESPONSE_TRAILERS = ep.ProcessingRequest(response_trailers=ep.HttpTrailers())


def test_response_headers_phase_then_the_stream_ends(connect: Any, plugin_dir: Path) -> None:
    output = {"headers": {"set": [{"name": ":status", "value": "201"}]}}
    stub = connect(scripted(plugin_dir, process_response_headers=output))
    # The trailers go unanswered: no plugin needs anything after the response headers, so the
    # server ends the stream cleanly and Envoy goes on without it.
    first, second = exchange(stub, headers(*REQUEST, end_of_stream=True), RESPONSE_HEADERS, RESPONSE_TRAILERS)
    assert first.mode_override.response_header_mode == ProcessingMode.SEND
    [option] = second.response_headers.response.header_mutation.set_headers
    assert (option.header.key, option.header.raw_value) == (":status", b"201")


def test_header_only_plugins_end_the_stream_after_the_request_headers(connect: Any, plugin_dir: Path) -> None:
    stub = connect(scripted(plugin_dir, process_request_headers={}))
    [reply] = exchange(stub, headers(*REQUEST, end_of_stream=True), RESPONSE_HEADERS)
    assert reply.HasField("request_headers")


def test_trailers_get_an_empty_reply_while_a_plugin_waits_for_more(connect: Any, plugin_dir: Path) -> None:
    stub = connect(scripted(plugin_dir, process_response_body={}))
    first, second, third = exchange(stub, headers(*REQUEST, end_of_stream=True), RESPONSE_HEADERS, RESPONSE_TRAILERS)
    assert first.mode_override.response_body_mode == ProcessingMode.BUFFERED
    assert second.HasField("response_headers")
    assert third.HasField("response_trailers")


def test_dynamic_metadata_is_namespaced_by_plugin(connect: Any, plugin_dir: Path) -> None:
    output = {"dynamic_metadata": {"decision": "allow"}}
    [reply] = exchange(connect(scripted(plugin_dir, process_request_headers=output)), headers(*REQUEST))
    assert reply.dynamic_metadata.fields["extproc"].struct_value.fields["s"].struct_value.fields[
        "decision"
    ].string_value == ("allow")


# --- stream limits, over a real channel --------------------------------------------------------


def idle_call(stub: Stub) -> Any:
    """A stream that has begun (the server holds it) and sends nothing until cancelled."""
    waiting = threading.Event()

    def nothing() -> Iterator[ep.ProcessingRequest]:
        waiting.wait()
        return
        yield  # a generator that never yields

    open_before = metric_value("extproc_active_streams")
    call = stub.Process(nothing(), timeout=30)
    call.add_done_callback(lambda _: waiting.set())
    # The server sends no metadata before its first reply, so its stream count tells when it has the stream.
    wait_until(lambda: metric_value("extproc_active_streams") > open_before, 10, "the server to hold the stream")
    return call


def test_a_stream_over_the_limit_is_refused_at_once(connect: Any, plugin_dir: Path) -> None:
    stub = connect(scripted(plugin_dir, process_request_headers={}), max_concurrent_streams=2)
    held = [idle_call(stub) for _ in range(2)]
    refused_before = metric_value("extproc_streams_ended_total", how="refused")
    with pytest.raises(grpc.RpcError) as info:
        exchange(stub, headers(*REQUEST))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_concurrent_streams (2)" in (info.value.details() or "")
    assert metric_value("extproc_streams_ended_total", how="refused") == refused_before + 1
    held[0].cancel()
    wait_until(lambda: metric_value("extproc_active_streams") <= 1, 10, "the cancelled stream to end")
    [reply] = exchange(stub, headers(*REQUEST))  # room again
    assert reply.HasField("request_headers")
    held[1].cancel()


def test_a_stream_idle_past_the_limit_is_closed(connect: Any, plugin_dir: Path) -> None:
    stub = connect(scripted(plugin_dir, process_response_headers={}), stream_idle_timeout_ms=200)
    idle_before = metric_value("extproc_streams_ended_total", how="idle")

    def headers_then_nothing() -> Iterator[ep.ProcessingRequest]:
        yield headers(*REQUEST)
        threading.Event().wait(5)  # Envoy waiting for an upstream that never answers

    call = stub.Process(headers_then_nothing(), timeout=10)
    first = next(call)
    assert first.HasField("request_headers")
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no message from Envoy for 200 ms" in (info.value.details() or "")
    # Counted as the stream's task ends, which may be just after the client has the status.
    wait_until(lambda: metric_value("extproc_streams_ended_total", how="idle") == idle_before + 1, 10, "the idle count")


def test_messages_larger_than_grpcio_default_are_received(connect: Any, plugin_dir: Path) -> None:
    plugin: dict[str, Any] = {"name": "t", "path": str(plugin_dir / "transform.wasm"), "config": {"suffix": "!"}}
    plugin |= {"execution_points": ["request_body"], "memory_limit_mb": 256, "timeout_ms": 10_000}
    payload = b"y" * (5 * 1024 * 1024)
    stub = connect(plugin, client_options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    _, second = exchange(stub, headers(*REQUEST), body(payload, end_of_stream=True))
    assert second.request_body.response.body_mutation.body == payload + b"!"


def test_a_slow_plugin_call_does_not_hold_up_other_streams(connect: Any, plugin_dir: Path) -> None:
    slow = {"name": "slow", "path": str(plugin_dir / "loop.wasm"), "timeout_ms": 3000, "on_error": "fail_open"}
    slow["match"] = {"path_prefix": "/slow"}
    quick = scripted(plugin_dir, process_request_headers={})
    stub = connect(slow, quick, inline_call_budget_us=0)
    open_before = metric_value("extproc_active_streams")
    spinning = stub.Process(iter([headers((":path", "/slow/1"), *REQUEST[:1])]), timeout=30)
    wait_until(lambda: metric_value("extproc_active_streams") > open_before, 10, "the slow stream to start")
    started = time.monotonic()
    for _ in range(20):
        [reply] = exchange(stub, headers(*REQUEST))
        assert reply.HasField("request_headers")
    assert time.monotonic() - started < 2.5  # well inside the slow call's 3 s
    assert spinning.is_active()
    spinning.cancel()
