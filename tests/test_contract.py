from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc._pb.extproc.plugin.v1 import plugin_pb2
from extproc.contract import (
    HeaderChanges,
    ImmediateReply,
    MessageView,
    PluginOutput,
    build_input,
    check_for_export,
    decode_json,
    decode_protobuf,
    encode_json,
    encode_protobuf,
)
from extproc.errors import OutputError
from extproc.phases import Phase

REQUEST = MessageView(
    headers=[
        (":method", "POST"),
        (":path", "/a?b=1"),
        (":scheme", "http"),
        (":authority", "example.com"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),
    ],
    body=b"hello",
)


def test_input_carries_request_with_repeated_headers() -> None:
    data = build_input(Phase.REQUEST_BODY, "p", REQUEST, None, {"source.address": "1.2.3.4:5"}, {})
    assert data["phase"] == "REQUEST_BODY"
    assert data["request"]["method"] == "POST"
    assert data["request"]["path"] == "/a?b=1"
    assert data["request"]["authority"] == "example.com"
    assert [h for h in data["request"]["headers"] if h["name"] == "cookie"] == [
        {"name": "cookie", "value": "a=1"},
        {"name": "cookie", "value": "b=2"},
    ]
    assert data["request"]["body"] == {"text": "hello"}
    assert data["attributes"] == {"source.address": "1.2.3.4:5"}
    assert "response" not in data and "metadata" not in data


def test_binary_body_is_base64() -> None:
    view = MessageView(headers=[(":status", "200")], body=b"\xff\x00")
    data = build_input(Phase.RESPONSE_BODY, "p", REQUEST, view, {}, {})
    assert data["response"] == {
        "status": 200,
        "headers": [{"name": ":status", "value": "200"}],
        "body": {"data": base64.b64encode(b"\xff\x00").decode()},
    }


@pytest.mark.parametrize(
    ("status", "number"),
    [("204", 204), ("9" * 39, 0), ("20", 0), ("2000", 0), ("", 0), ("abc", 0), ("\u0663\u0660\u0660", 0)],
    ids=["three-digits", "thirty-nine-nines", "two-digits", "four-digits", "empty", "letters", "arabic-digits"],
)
def test_response_status_is_a_number_only_when_it_is_three_digits(status: str, number: int) -> None:
    view = MessageView(headers=[(":status", status)])
    data = build_input(Phase.RESPONSE_HEADERS, "p", REQUEST, view, {}, {})
    assert data["response"]["status"] == number
    assert data["response"]["headers"] == [{"name": ":status", "value": status}]
    for encode in (encode_json, encode_protobuf):
        assert encode(data)  # the input must encode whatever Envoy sent


def test_json_and_protobuf_inputs_describe_the_same_message() -> None:
    data = build_input(Phase.REQUEST_HEADERS, "p", REQUEST, None, {"n": 1.0}, {"ns": {"k": "v"}})
    from_json = plugin_pb2.PluginInput()
    from google.protobuf import json_format

    json_format.Parse(encode_json(data), from_json)
    from_binary = plugin_pb2.PluginInput.FromString(encode_protobuf(data))
    assert from_json == from_binary
    assert from_binary.request.headers[4].name == "cookie"


@pytest.mark.parametrize("raw", [b"", b"  ", b"{}", b"null"])
def test_empty_output_means_no_change(raw: bytes) -> None:
    assert decode_json(raw) is None


def test_full_output_parses() -> None:
    raw = json.dumps(
        {
            "headers": {
                "set": [{"name": "X-A", "value": "1"}],
                "append": [{"name": "b", "value": "2"}],
                "remove": ["c"],
            },
            "body": {"data": base64.b64encode(b"\x00\x01").decode()},
            "dynamic_metadata": {"decision": "allow"},
        }
    ).encode()
    assert decode_json(raw) == PluginOutput(
        headers=HeaderChanges(set=(("x-a", "1"),), append=(("b", "2"),), remove=("c",)),
        body=b"\x00\x01",
        metadata={"decision": "allow"},
    )


def test_immediate_response_parses() -> None:
    raw = b'{"immediate_response": {"status": 403, "headers": [{"name": "x", "value": "y"}], "body": {"text": "no"}}}'
    output = decode_json(raw)
    assert output is not None
    assert output.immediate == ImmediateReply(status=403, headers=(("x", "y"),), body=b"no")


def test_protobuf_output_parses() -> None:
    message = plugin_pb2.PluginOutput()
    message.headers.set.add(name="x-a", value="1")
    message.immediate_response.status = 201
    message.immediate_response.grpc_status = 0
    output = decode_protobuf(message.SerializeToString())
    assert output is not None
    assert output.headers == HeaderChanges(set=(("x-a", "1"),))
    assert output.immediate == ImmediateReply(status=201, grpc_status=0)


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"not json {", ""),
        (b"[]", ""),
        (b'{"bogus": 1}', ""),
        (b'{"headers": {"set": [{"name": "bad name", "value": "v"}]}}', "headers.set[0].name"),
        (b'{"headers": {"set": [{"name": "x", "value": "a\\r\\nb"}]}}', "headers.set[0].value"),
        (b'{"headers": {"set": [{"name": "x", "value": 1}]}}', "headers.set[0].value"),
        (b'{"headers": {"set": {"name": "x"}}}', "headers.set"),
        (b'{"headers": {"remove": [""]}}', "headers.remove[0]"),
        (b'{"body": {"text": "a", "data": "YQ=="}}', "body"),
        (b'{"body": {"data": "***"}}', "body.data"),
        (b'{"immediate_response": {"status": 99}}', "immediate_response.status"),
        (b'{"immediate_response": {"status": 600}}', "immediate_response.status"),
        (b'{"immediate_response": {"status": true}}', "immediate_response.status"),
        (b'{"immediate_response": {}}', "immediate_response.status"),
        (b'{"immediate_response": {"status": 200, "grpc_status": 17}}', "immediate_response.grpc_status"),
        (b'{"headers": {"set": [{"name": ":status", "value": "700"}]}}', "headers.set[0].value"),
        (b'{"headers": {"set": [{"name": ":path", "value": ""}]}}', "headers.set[0].value"),
        (
            b'{"immediate_response": {"status": 200, "headers": [{"name": ":status", "value": "1"}]}}',
            "immediate_response.headers[0].name",
        ),
        (b'{"dynamic_metadata": 3}', "dynamic_metadata"),
    ],
)
def test_bad_output_names_the_field(raw: bytes, where: str) -> None:
    with pytest.raises(OutputError) as caught:
        decode_json(raw)
    assert caught.value.where == where
    assert caught.value.reason


def header_output(field: str, header: dict[str, object]) -> bytes:
    """An output putting one header in `field`: headers.set, headers.append or immediate_response.headers."""
    if field == "immediate_response.headers":
        return orjson.dumps({"immediate_response": {"status": 200, "headers": [header]}})
    return orjson.dumps({"headers": {field.removeprefix("headers."): [header]}})


HEADER_FIELDS = ["headers.set", "headers.append", "immediate_response.headers"]


@pytest.mark.parametrize("field", HEADER_FIELDS)
@pytest.mark.parametrize(
    ("header", "where"),
    [
        # Names: not a token (the newline used to pass: `$` matches before a final newline), a
        # non-ASCII letter that lower() turns into "k", an unknown pseudo-header.
        ({"name": "x-a\n", "value": "v"}, "name"),
        ({"name": "x-\u212a", "value": "v"}, "name"),
        ({"name": ":protocol", "value": "websocket"}, "name"),
        # Values: RFC 9110 field-value rules.
        ({"name": "x", "value": " leading"}, "value"),
        ({"name": "x", "value": "trailing\t"}, "value"),
        ({"name": "x", "value": "a\u0001b"}, "value"),
        ({"name": "x", "value": "a\u007fb"}, "value"),
        ({"name": "x", "value": "a\u000bb"}, "value"),
        ({"name": "host", "value": "a b"}, "value"),
        ({"name": "x", "raw_value": "IGE="}, "raw_value"),  # " a"
        ({"name": "x", "raw_value": "YQ1i"}, "raw_value"),  # "a\rb"
        ({"name": "x", "raw_value": "not base64"}, "raw_value"),
        ({"name": "x", "raw_value": 1}, "raw_value"),
        ({"name": "x", "value": "a", "raw_value": "YQ=="}, ""),
    ],
    ids=[
        "name-newline",
        "name-kelvin-sign",
        "name-unknown-pseudo",
        "value-leading-space",
        "value-trailing-tab",
        "value-control",
        "value-del",
        "value-vertical-tab",
        "host-with-space",
        "raw-leading-space",
        "raw-cr",
        "raw-not-base64",
        "raw-not-a-string",
        "value-and-raw",
    ],
)
def test_header_names_and_values_follow_http_rules_in_every_output_field(
    field: str, header: dict[str, object], where: str
) -> None:
    with pytest.raises(OutputError) as caught:
        decode_json(header_output(field, header))
    assert caught.value.where == f"{field}[0].{where}".rstrip(".")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (":path", "/x HTTP/1.1\tinjected/"),
        (":path", "/injected HTTP/1.0"),
        (":path", "/caf\u00e9"),
        (":path", "/a\u0000"),
        (":path", "/a#fragment"),
        (":path", "relative"),
        (":path", ""),
        (":method", "GET /x HTTP/1.1"),
        (":method", "GET\t"),
        (":method", "G\u00c9T"),
        (":authority", "evil.example\tx"),
        (":authority", "user@shop.example"),
        (":authority", "shop.example:80x"),
        (":authority", "[::1]junk"),
        (":authority", ""),
        (":scheme", "ht tp"),
        (":scheme", "1http"),
        (":status", "0200"),
        (":status", "700"),
        (":status", "2000"),
        (":status", " 200"),
    ],
)
def test_pseudo_header_values_follow_their_grammar(name: str, value: str) -> None:
    """The attack from issue 15: a space or tab in :path or :method splits an HTTP/1 request line."""
    with pytest.raises(OutputError) as caught:
        decode_json(header_output("headers.set", {"name": name, "value": value}))
    assert caught.value.where == "headers.set[0].value"
    assert caught.value.reason.startswith(name)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (":path", "/a/b?c=d&e=%20f|{}"),
        (":path", "*"),
        (":method", "PROPFIND"),
        (":authority", "shop.example.com:8443"),
        (":authority", "10.0.0.1"),
        (":authority", "[2001:db8::1]:443"),
        (":authority", "[::ffff:192.0.2.1]"),
        (":authority", "[::]"),
        (":authority", "a%2Fb.example"),
        ("host", "xn--caf-dma.example"),
        (":scheme", "https"),
        (":status", "204"),
        ("x-plain", ""),
        ("x-spaced", "a b\tc"),
        ("x-utf8", "caf\u00e9 \u2603"),
    ],
)
def test_values_within_the_rules_pass(name: str, value: str) -> None:
    output = decode_json(header_output("headers.set", {"name": name, "value": value}))
    assert output is not None and output.headers is not None
    assert output.headers.set == ((name, value),)


def test_garbage_protobuf_is_rejected() -> None:
    with pytest.raises(OutputError):
        decode_protobuf(b"\xff\xff\xff")


@pytest.mark.parametrize(
    ("output", "export"),
    [
        (PluginOutput(body=b"x"), Phase.REQUEST_HEADERS),
        (PluginOutput(headers=HeaderChanges(set=((":status", "200"),))), Phase.REQUEST_HEADERS),
        (PluginOutput(headers=HeaderChanges(set=((":path", "/x"),))), Phase.RESPONSE_HEADERS),
        (PluginOutput(headers=HeaderChanges(remove=(":path",))), Phase.REQUEST_HEADERS),
        (PluginOutput(headers=HeaderChanges(append=((":authority", "x"),))), Phase.REQUEST_HEADERS),
    ],
    ids=["body-in-headers-phase", ":status-on-request", ":path-on-response", "remove-:path", "append-:authority"],
)
def test_phase_rules(output: PluginOutput, export: Phase) -> None:
    with pytest.raises(OutputError):
        check_for_export(output, export)


@pytest.mark.parametrize(
    ("output", "export"),
    [
        (PluginOutput(body=b"x"), Phase.RESPONSE_BODY),
        (PluginOutput(headers=HeaderChanges(set=((":path", "/x"),))), Phase.REQUEST_HEADERS),
        (PluginOutput(headers=HeaderChanges(set=((":status", "418"),))), Phase.RESPONSE_HEADERS),
        (PluginOutput(headers=HeaderChanges(set=((":method", "OPTIONS"), (":path", "*")))), Phase.REQUEST_HEADERS),
    ],
    ids=["body-in-body-phase", ":path-on-request", ":status-on-response", "options-asterisk"],
)
def test_phase_rules_allow(output: PluginOutput, export: Phase) -> None:
    check_for_export(output, export)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
output_like = st.fixed_dictionaries(
    {},
    optional={
        "headers": st.fixed_dictionaries(
            {},
            optional={
                "set": st.lists(st.fixed_dictionaries({"name": st.text(), "value": json_values}), max_size=3),
                "append": json_values,
                "remove": st.lists(json_values, max_size=3),
            },
        ),
        "body": st.dictionaries(st.sampled_from(["text", "data", "x"]), json_values, max_size=2),
        "immediate_response": st.dictionaries(
            st.sampled_from(["status", "headers", "body", "grpc_status", "details"]), json_values, max_size=5
        ),
        "dynamic_metadata": json_values,
    },
)


@given(st.binary(max_size=200) | output_like.map(orjson.dumps) | json_values.map(orjson.dumps))
def test_any_output_parses_or_fails_with_a_clear_error(raw: bytes) -> None:
    try:
        output = decode_json(raw)
    except OutputError as exc:
        assert str(exc)
        return
    if output is not None:
        for export in Phase:
            try:
                check_for_export(output, export)
            except OutputError as exc:
                assert str(exc)


@given(st.binary(max_size=200))
def test_any_protobuf_output_parses_or_fails_with_a_clear_error(raw: bytes) -> None:
    try:
        decode_protobuf(raw)
    except OutputError as exc:
        assert str(exc)
