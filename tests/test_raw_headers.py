"""Header bytes that are not UTF-8 reach plugins exactly and leave exactly as a plugin wrote them.

`caf\\xe9` (latin-1) used to reach plugins as "café", the same text as the UTF-8 spelling, so a
plugin that wrote the value back changed its bytes. Now the server keeps such bytes as surrogate
escapes, plugins get them as `raw_value` (base64) beside a display `value`, and `raw_value` in
output is sent to Envoy as those bytes.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc import wire
from extproc._pb.extproc.plugin.v1 import plugin_pb2
from extproc.contract import (
    HeaderChanges,
    MessageView,
    build_input,
    decode_json,
    decode_protobuf,
    encode_json,
    encode_protobuf,
)
from extproc.fields import value_bytes
from extproc.headers import HeaderList
from extproc.phases import Phase
from extproc.testing import PluginHarness, request, response
from tests.examples_build import example_wasm

LATIN1 = b"caf\xe9"
UTF8 = "café".encode()
# Not UTF-8 in three ways: a lone continuation byte, a truncated sequence, an encoded surrogate.
ODD = b"a\x80b \xe2\x82 \xed\xa0\x80"


def header_map(*pairs: tuple[str, bytes]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=name, raw_value=raw) for name, raw in pairs])


def test_envoy_header_bytes_keep_their_identity() -> None:
    pairs = wire.header_pairs(header_map(("x-latin", LATIN1), ("x-utf8", UTF8), ("x-odd", ODD)))
    assert pairs[0][1] != pairs[1][1]
    assert [value_bytes(value) for _, value in pairs] == [LATIN1, UTF8, ODD]


def test_plugin_input_carries_the_exact_bytes_in_raw_value() -> None:
    pairs = wire.header_pairs(header_map((":path", b"/caf\xe9"), ("x-latin", LATIN1), ("x-utf8", UTF8)))
    data = json.loads(encode_json(build_input(Phase.REQUEST_HEADERS, "p", MessageView(pairs), None, {}, {})))
    request_json = data["request"]
    assert request_json["headers"] == [
        {"name": ":path", "value": "/caf\ufffd", "raw_value": base64.b64encode(b"/caf\xe9").decode()},
        {"name": "x-latin", "value": "caf\ufffd", "raw_value": base64.b64encode(LATIN1).decode()},
        {"name": "x-utf8", "value": "café"},
    ]
    assert request_json["path"] == "/caf\ufffd"


def test_protobuf_plugins_get_the_same_bytes() -> None:
    pairs = wire.header_pairs(header_map(("x-latin", LATIN1), ("x-utf8", UTF8)))
    data = build_input(Phase.REQUEST_HEADERS, "p", MessageView(pairs), None, {}, {})
    message = plugin_pb2.PluginInput.FromString(encode_protobuf(data))
    assert [(h.name, h.value, h.raw_value) for h in message.request.headers] == [
        ("x-latin", "caf\ufffd", LATIN1),
        ("x-utf8", "café", b""),
    ]


@pytest.mark.parametrize("raw", [LATIN1, UTF8, ODD])
def test_raw_value_in_output_reaches_envoy_as_those_bytes(raw: bytes) -> None:
    encoded = base64.b64encode(raw).decode()
    output = decode_json(json.dumps({"headers": {"set": [{"name": "x-copy", "raw_value": encoded}]}}).encode())
    assert output is not None and output.headers is not None
    headers = HeaderList([(":path", "/")])
    headers.apply(output.headers)
    mutation = ep.HeaderMutation()
    wire.fill_header_mutation(mutation, headers.diff())
    assert [(o.header.key, o.header.raw_value) for o in mutation.set_headers] == [("x-copy", raw)]


def test_protobuf_output_with_raw_value() -> None:
    message = plugin_pb2.PluginOutput()
    message.headers.append.add(name="x-copy", raw_value=LATIN1)
    output = decode_protobuf(message.SerializeToString())
    assert output is not None and output.headers is not None
    assert [(name, value_bytes(value)) for name, value in output.headers.append] == [("x-copy", LATIN1)]


def test_immediate_response_headers_may_be_raw() -> None:
    encoded = base64.b64encode(LATIN1).decode()
    raw = {"immediate_response": {"status": 403, "headers": [{"name": "x-why", "raw_value": encoded}]}}
    output = decode_json(json.dumps(raw).encode())
    assert output is not None and output.immediate is not None
    reply = wire.immediate_response(output.immediate, is_grpc=False)
    assert [o.header.raw_value for o in reply.immediate_response.headers.set_headers] == [LATIN1]


def test_a_plugin_sees_the_raw_value_through_the_harness(plugin_dir: Path) -> None:
    with PluginHarness(plugin_dir / "echo.wasm") as harness:
        result = harness.run(request("GET", "/", headers=[("x-latin", LATIN1)]))
    assert result.response is not None
    seen = result.response.json()["request"]["headers"]
    assert {"name": "x-latin", "value": "caf\ufffd", "raw_value": base64.b64encode(LATIN1).decode()} in seen


def test_header_rewrite_moves_exact_bytes_through_the_harness() -> None:
    """The SDK reads the bytes (Headers.getAllBytes) and writes them back (appendHeaderBytes)."""
    config = {"request": {"rename": {"x-raw": "x-moved"}}, "response": {"rename": {"x-raw": "x-moved"}}}
    with PluginHarness(example_wasm("header-rewrite"), config=config) as harness:
        values = {"x-raw": [LATIN1, UTF8, ODD]}
        result = harness.run(request("GET", "/", headers=values), response(200, headers=values))
    for message in (result.upstream, result.response):
        assert message is not None
        assert message.header("x-raw") is None
        assert [value_bytes(v) for v in message.header_values("x-moved")] == [LATIN1, UTF8, ODD]


def test_header_changes_keep_raw_values_apart_from_text() -> None:
    """The diff sent to Envoy sees `caf\\xe9` and "café" as different values."""
    headers = HeaderList(wire.header_pairs(header_map(("x", LATIN1))))
    headers.apply(HeaderChanges(set=(("x", "café"),)))
    assert headers.diff().replaced == (("x", ("café",)),)
