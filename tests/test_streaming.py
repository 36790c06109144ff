"""Streamed bodies, trailers, state across phases and route values, through the server's stream code."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.config import parse_config
from extproc.contract import validate_output
from extproc.errors import PluginLoadError
from extproc.plugins.registry import PluginSet
from extproc.plugins.runner import PluginThreads
from extproc.stream import ExchangeStream, Replies
from extproc.testing import PluginHarness, exchange, request, response

GRPC_STATUS_OK = {"grpc-status": "0", "grpc-message": ""}


@pytest.fixture
def stream_plugin(plugin_dir: Path) -> Iterator[PluginHarness]:
    with PluginHarness(plugin_dir / "stream.wasm") as harness:
        yield harness


def test_each_response_chunk_goes_through_the_plugin_as_it_comes(stream_plugin: PluginHarness) -> None:
    result = stream_plugin.run(request(), response(chunks=["ab", "cd", "ef"], headers={"content-length": "6"}))
    assert result.response is not None
    assert result.response.chunks == (b"<0>AB", b"<1>CD", b"<2$>EF")
    # Chunks may change length: the length announced before them goes.
    assert result.response.header("content-length") is None
    # The state the request headers left reached the response headers.
    assert result.response.header("x-state") == "h"
    assert result.phases == ("request_headers", "response_headers", "response_body", "response_body", "response_body")


def test_state_carries_across_chunks_to_the_trailers(stream_plugin: PluginHarness) -> None:
    result = stream_plugin.run(
        request(chunks=["x", "y"], trailers={"x-checksum": "1"}),
        response(chunks=["a", "b", "c"], trailers=GRPC_STATUS_OK),
    )
    assert result.upstream is not None and result.response is not None
    # A body that ends with trailers has no last chunk.
    assert result.upstream.chunks == (b"<0>X", b"<1>Y")
    assert result.upstream.trailer("x-state") == "h01"
    assert result.upstream.trailer("x-checksum") == "1"
    assert result.response.chunks == (b"<0>A", b"<1>B", b"<2>C")
    # State is per exchange and per plugin: the response continues what the request chunks left.
    assert result.response.trailer("x-state") == "h01012"
    assert result.response.trailer("x-seen-grpc-status") == "0"


def test_a_whole_body_plugin_buffers_the_body_and_chunk_plugins_see_it_as_one_last_chunk(plugin_dir: Path) -> None:
    plugins: list[dict[str, Any]] = [
        {"name": "chunks", "path": str(plugin_dir / "stream.wasm")},
        {
            "name": "whole",
            "path": str(plugin_dir / "transform.wasm"),
            "execution_points": ["response_body"],
            "config": {"prefix": "whole:"},
        },
    ]
    with _plugin_set(plugins) as loaded:
        result = exchange(loaded, request(), response(chunks=["ab", "cd"]))
    assert result.response is not None
    # Config order: the chunk plugin first, on the whole body, then the whole-body plugin on its output.
    assert result.response.body == b"whole:<0$>ABCD"


def test_trailers_reach_plugins_and_change(plugin_dir: Path) -> None:
    with PluginHarness(plugin_dir / "stream.wasm", execution_points=["response_trailers"]) as harness:
        result = harness.run(request(), response(body="payload", trailers={"grpc-status": "13"}))
    assert result.response is not None
    assert result.response.body == b"payload"
    assert result.response.trailer("x-seen-grpc-status") == "13"
    assert result.response.trailer("grpc-status") == "13"


@pytest.mark.parametrize(
    ("export", "output", "field"),
    [
        ("process_response_body_chunk", {"headers": {"set": [{"name": "x-a", "value": "1"}]}}, "headers"),
        ("process_response_trailers", {"headers": {"set": [{"name": ":status", "value": "500"}]}}, "headers.set[0]"),
        ("process_response_trailers", {"body": {"text": "x"}}, "body"),
        ("process_response_headers", {"state": {"text": "x" * (16 * 1024 + 1)}}, "state"),
    ],
    ids=["headers-in-chunk", "pseudo-header-in-trailers", "body-in-trailers", "state-over-16k"],
)
def test_outputs_a_phase_cannot_carry_fail_the_plugin(
    plugin_dir: Path, caplog: pytest.LogCaptureFixture, export: str, output: dict[str, Any], field: str
) -> None:
    point = export.removeprefix("process_")
    config = {export: json.dumps(output)}
    with PluginHarness(plugin_dir / "scripted_streaming.wasm", config=config, execution_points=[point]) as harness:
        result = harness.run(request(), response(chunks=["a"], trailers=GRPC_STATUS_OK))
    assert result.immediate and result.status == 503
    assert f"bad_output: {field}" in caplog.text


@pytest.mark.parametrize(
    ("state", "kept"),
    [({"text": "t"}, b"t"), ({"data": "AP8="}, b"\x00\xff"), ({"text": ""}, b""), ({}, b""), (None, b"")],
    ids=["text", "data", "empty-text-drops", "empty-body-drops", "null-drops"],
)
def test_output_state_decodes_to_bytes(state: object, kept: bytes) -> None:
    output = validate_output({"state": state})
    assert output is not None and output.state == kept


def test_a_plugin_may_read_a_body_whole_or_in_chunks_not_both(plugin_dir: Path) -> None:
    points = ["response_body", "response_body_chunk"]
    with pytest.raises(PluginLoadError, match="reads its response body both whole and in chunks"):
        PluginHarness(plugin_dir / "scripted_streaming.wasm", execution_points=points)


def test_route_metadata_reaches_the_plugin_as_its_route_values(plugin_dir: Path) -> None:
    text = (
        'filter_metadata { key: "extproc" value { fields { key: "plugin" value { struct_value { fields '
        '{ key: "rps" value { number_value: 5 } } } } } fields { key: "other" value { struct_value { } } } } }'
    )
    with PluginHarness(plugin_dir / "echo.wasm") as harness:
        result = harness.run(request(attributes={"source.address": "1.2.3.4:5", "xds.route_metadata": text}))
    assert result.response is not None
    seen = result.response.json()
    assert seen["route"] == {"rps": 5}
    # The raw text is the server's business, not the plugin's.
    assert "xds.route_metadata" not in seen["attributes"]


# --- FULL_DUPLEX_STREAMED: the server never ends such a stream early, and answers as the mode requires ----


def _headers_message(*, end_of_stream: bool = True, duplex_response: bool = False) -> ep.ProcessingRequest:
    header_map = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":path", raw_value=b"/")])
    config = ep.ProtocolConfiguration(
        response_body_mode=ProcessingMode.FULL_DUPLEX_STREAMED if duplex_response else ProcessingMode.NONE
    )
    return ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(headers=header_map, end_of_stream=end_of_stream), protocol_config=config
    )


def _response_headers_message(*, end_of_stream: bool) -> ep.ProcessingRequest:
    header_map = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200")])
    return ep.ProcessingRequest(response_headers=ep.HttpHeaders(headers=header_map, end_of_stream=end_of_stream))


def _chunk(data: bytes, end_of_stream: bool) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(response_body=ep.HttpBody(body=data, end_of_stream=end_of_stream))


async def _send_all(stream: ExchangeStream, *messages: ep.ProcessingRequest) -> list[Replies]:
    return [await stream.handle(message) for message in messages]


@contextlib.contextmanager
def _plugin_set(plugins: list[dict[str, Any]]) -> Iterator[PluginSet]:
    config = parse_config({"plugins": plugins}, Path("streaming.yaml").absolute())
    threads = PluginThreads(2)
    loaded = PluginSet.load(config, threads)
    try:
        yield loaded
    finally:
        loaded.close()
        threads.close()


def _streamed(reply: Replies) -> tuple[bytes, bool]:
    assert isinstance(reply, ep.ProcessingResponse)
    streamed = reply.response_body.response.body_mutation.streamed_response
    return streamed.body, streamed.end_of_stream


def test_duplex_body_no_plugin_reads_is_sent_back_chunk_by_chunk(plugin_dir: Path) -> None:
    """Ending the stream early, or overriding the mode, would lose the body (tests/e2e/test_streaming.py)."""
    with _plugin_set(
        [{"name": "h", "path": str(plugin_dir / "stream.wasm"), "match": {"path_prefix": "/x"}}]
    ) as loaded:
        stream = ExchangeStream(loaded, 1024)
        first, *rest = asyncio.run(
            _send_all(
                stream,
                _headers_message(duplex_response=True),
                _response_headers_message(end_of_stream=False),
                _chunk(b"one", False),
                _chunk(b"two", True),
            )
        )
        assert isinstance(first, ep.ProcessingResponse)
        assert first.mode_override.response_body_mode == ProcessingMode.FULL_DUPLEX_STREAMED
        assert [_streamed(reply) for reply in rest[1:]] == [(b"one", False), (b"two", True)]
        assert stream.done


def _whole_body_plugin(plugin_dir: Path) -> dict[str, Any]:
    """A plugin that reads the whole response body (it exports no chunk phase) and prefixes it with "<"."""
    return {
        "name": "whole",
        "path": str(plugin_dir / "transform.wasm"),
        "execution_points": ["response_body"],
        "config": {"prefix": "<"},
    }


def test_duplex_body_for_a_whole_body_plugin_is_held_then_sent_with_the_trailers(plugin_dir: Path) -> None:
    with _plugin_set([_whole_body_plugin(plugin_dir)]) as loaded:
        stream = ExchangeStream(loaded, 1024)
        trailers = ep.ProcessingRequest(
            response_trailers=ep.HttpTrailers(
                trailers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key="grpc-status", raw_value=b"0")])
            )
        )
        replies = asyncio.run(
            _send_all(
                stream,
                _headers_message(duplex_response=True),
                _response_headers_message(end_of_stream=False),
                _chunk(b"ab", False),
                _chunk(b"cd", False),
                trailers,
            )
        )
    # Held chunks get no reply of their own; the trailers get the whole body first, then their own reply.
    assert replies[2:4] == [(), ()]
    body, reply = replies[4]
    assert _streamed(body) == (b"<abcd", False)
    assert reply.HasField("response_trailers")
    assert stream.done


def test_buffered_body_followed_by_trailers_is_answered_whole(plugin_dir: Path) -> None:
    """BUFFERED sends a body that trailers follow without end_of_stream: it is the whole body all the same."""
    with _plugin_set([_whole_body_plugin(plugin_dir)]) as loaded:
        stream = ExchangeStream(loaded, 1024)
        replies = asyncio.run(
            _send_all(stream, _headers_message(), _response_headers_message(end_of_stream=False), _chunk(b"ab", False))
        )
    reply = replies[2]
    assert isinstance(reply, ep.ProcessingResponse)
    assert reply.response_body.response.body_mutation.body == b"<ab"
    # No plugin reads the trailers, so nothing more is needed.
    assert stream.done
