"""The SDKs' JSON parsers and writers, base64, and header values as bytes: AssemblyScript
(sdk/assemblyscript/assembly/json.ts, contract.ts), Rust (sdk/rust) and C (sdk/c).

Each SDK has a probe plugin with the same exports (sdk/assemblyscript/tests/json_probe.ts, sdk/rust/probe,
sdk/c/tests/probe.c, the last built as C++); each export runs one SDK function on the call input and writes what
it produced, or INVALID when the SDK rejected the input. Every test runs against every probe (ids
assemblyscript_sdk, rust_sdk, c_sdk), so the three SDKs answer one table of expectations.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import extism
import pytest

from extproc.contract import decode_json
from extproc.fields import value_bytes
from scripts.sdk_build import probe_wasm
from support.npm import npm
from tests.examples_build import EXAMPLES_DIR, REPO_ROOT, ensure_installed

PROBE_SOURCE = REPO_ROOT / "sdk" / "assemblyscript" / "tests" / "json_probe.ts"
INVALID = b"INVALID"
# json.ts's MAX_DEPTH: a value inside this many arrays or objects still parses, one level more does not.
MAX_DEPTH = 512


SDKS = ["assemblyscript", "rust", "c"]


@pytest.fixture(scope="session", params=SDKS, ids=[f"{sdk}_sdk" for sdk in SDKS])
def sdk(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def probe(sdk: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[extism.Plugin]:
    if sdk == "assemblyscript":
        # examples/ has assemblyscript and the SDK's extproc-build installed; the entry may lie outside it.
        ensure_installed()
        wasm = tmp_path_factory.mktemp("sdk-json") / "json_probe.wasm"
        npm(["exec", "--", "extproc-build", str(PROBE_SOURCE), "-o", str(wasm)], EXAMPLES_DIR)
    else:
        wasm = probe_wasm(sdk)
    # The probe imports only the Extism kernel: no WASI, no extproc host functions.
    with extism.Plugin(wasm.read_bytes(), wasi=False) as plugin:
        yield plugin


def no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_loads(text: bytes) -> Any:
    """RFC 8259 JSON only: UTF-8, and none of the NaN/Infinity that Python's json module accepts by default."""
    return json.loads(text.decode("utf-8"), parse_constant=no_constant)


def call(probe: extism.Plugin, export: str, data: bytes) -> bytes:
    return bytes(probe.call(export, data))


# (id, input, the writer's exact output). The writer emits no whitespace, keeps member order and number
# text, writes non-ASCII as raw UTF-8 and escapes only quote, backslash and control characters.
VALID: list[tuple[str, bytes, bytes | None]] = [
    ("empty-object", b"{}", b"{}"),
    ("empty-array", b"[]", b"[]"),
    ("empty-containers-spaced", b"{ \n}", b"{}"),
    ("nested", b'{"a":[1,{"b":[[],{}]},[true,false,null]],"c":{"d":{"e":"f"}}}', None),
    ("member-order-kept", b'{"z":1,"a":2,"m":3,"b":4}', None),
    ("duplicate-key-last-value-first-position", b'{"a":1,"b":2,"a":3}', b'{"a":3,"b":2}'),
    ("empty-key", b'{"":0}', None),
    ("keys-escaped-like-values", b'{"a\\"b\\u00e9\\n":1}', b'{"a\\"b\xc3\xa9\\n":1}'),
    ("true", b"true", None),
    ("false", b"false", None),
    ("null", b"null", None),
    ("whitespace-around-and-inside", b' \t\r\n[ 1 ,\t{ "a" : null } ] \n', b'[1,{"a":null}]'),
    ("zero", b"0", None),
    ("negative-zero", b"-0", None),
    ("negative", b"-12", None),
    ("fraction", b"3.25", None),
    ("exponent-forms", b"[1e5,1E5,1e+5,1e-5,-1.5E-3,0e0]", None),
    ("number-text-kept", b"[1.0,1.50,100e0,0.5e-3]", None),
    ("integer-beyond-2^53", b"9007199254740993", None),
    ("integer-beyond-2^64", b"[123456789012345678901234567890,-98765432109876543210]", None),
    ("huge-exponent", b"1e400", None),
    ("string-empty", b'""', None),
    (
        "string-every-escape",
        b'"\\"\\\\\\/\\b\\f\\n\\r\\t"',
        b'"\\"\\\\/\\u0008\\u000c\\n\\r\\t"',
    ),
    ("string-u-escapes", b'"\\u0041\\u00e9\\u20AC\\uFFFF"', '"A\u00e9\u20ac\uffff"'.encode()),
    ("string-u-escape-control", b'"\\u0000\\u001f\\u007f"', b'"\\u0000\\u001f\x7f"'),
    ("string-surrogate-pair", b'"\\ud83d\\ude00"', '"\U0001f600"'.encode()),
    ("string-surrogate-pair-upper-hex", b'"\\uD834\\uDD1E"', '"\U0001d11e"'.encode()),
    ("string-raw-utf8", '"h\u00e9llo \u4e16\u754c \U0001f600 \ud55c\uad6d\uc5b4"'.encode(), None),
    ("string-hangul-via-escape", b'"\\ud55c"', '"\ud55c"'.encode()),
    ("string-line-separator", '"\u2028\u2029"'.encode(), None),
    ("string-slash-unescaped", b'"a/b"', None),
    ("string-long-with-escape-late", b'"' + b"x" * 5000 + b'\\n"', None),
    ("deep-arrays-at-limit", b"[" * MAX_DEPTH + b"1" + b"]" * MAX_DEPTH, None),
    ("deep-objects-at-limit", b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH, None),
    ("deep-empty-arrays-at-limit", b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), None),
    ("wide-array", b"[" + b",".join(str(i).encode() for i in range(2000)) + b"]", None),
]

# Lone surrogates are valid JSON escapes (RFC 8259 leaves their meaning open). UTF-8 cannot carry them, so
# the writer must escape them again to keep its output UTF-8.
LONE_SURROGATES: list[tuple[str, bytes, bytes | None]] = [
    ("lone-high", b'"\\ud800"', b'"\\ud800"'),
    ("lone-low", b'"\\udfff"', b'"\\udfff"'),
    ("high-then-text", b'"\\ud83dx"', b'"\\ud83dx"'),
    ("high-then-non-low-escape", b'"\\ud83d\\u0041"', b'"\\ud83dA"'),
    ("low-then-high", b'"\\ude00\\ud83d"', b'"\\ude00\\ud83d"'),
    ("high-high-low", b'"\\ud83d\\ud83d\\ude00"', '"\\ud83d\U0001f600"'.encode()),
    ("in-key", b'{"k\\udc00":1}', b'{"k\\udc00":1}'),
]


def valid_cases() -> list[Any]:
    return [pytest.param(text, text if out is None else out, id=name) for name, text, out in VALID + LONE_SURROGATES]


@pytest.mark.parametrize(("text", "expected"), valid_cases())
def test_roundtrip_writes_the_exact_expected_text(probe: extism.Plugin, text: bytes, expected: bytes) -> None:
    out = call(probe, "roundtrip", text)
    assert out == expected
    # The expectation is the same document for Python's json module too (its duplicate rule is the SDK's:
    # the last value wins); the exact text above already pins member order.
    assert strict_loads(out) == strict_loads(text)


@pytest.mark.parametrize(("text", "expected"), valid_cases())
def test_text_path_and_builders_write_the_same(probe: extism.Plugin, text: bytes, expected: bytes) -> None:
    # A copy through the public builders and getters; in AssemblyScript also JsonValue.parse(string) and
    # toString(), so every string goes UTF-8 -> UTF-16 -> UTF-8 on the way.
    assert call(probe, "rebuild", text) == expected


@pytest.mark.parametrize(("text", "expected"), valid_cases())
def test_writer_output_parses_back_to_itself(probe: extism.Plugin, text: bytes, expected: bytes) -> None:
    assert call(probe, "roundtrip", expected) == expected


INVALID_DOCS: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("only-whitespace", b" \n\t "),
    ("trailing-comma-array", b"[1,]"),
    ("trailing-comma-object", b'{"a":1,}'),
    ("leading-comma", b"[,1]"),
    ("lone-comma-object", b"{,}"),
    ("single-quoted-string", b"['a']"),
    ("single-quoted-key", b"{'a':1}"),
    ("unquoted-key", b"{a:1}"),
    ("number-key", b"{1:1}"),
    ("missing-colon", b'{"a" 1}'),
    ("double-colon", b'{"a"::1}'),
    ("missing-comma-array", b"[1 2]"),
    ("missing-comma-object", b'{"a":1 "b":2}'),
    ("leading-zero", b"01"),
    ("leading-zero-negative", b"-01"),
    ("double-zero", b"00"),
    ("leading-zero-in-array", b"[007]"),
    ("trailing-dot", b"1."),
    ("leading-dot", b".5"),
    ("lone-minus", b"-"),
    ("plus-sign", b"+1"),
    ("empty-exponent", b"1e"),
    ("signed-empty-exponent", b"1e+"),
    ("hex-number", b"0x10"),
    ("nan", b"NaN"),
    ("infinity", b"Infinity"),
    ("minus-infinity", b"-Infinity"),
    ("nan-in-array", b"[NaN]"),
    ("capitalised-literal", b"True"),
    ("truncated-literal", b"nul"),
    ("literal-with-suffix", b"[truex]"),
    ("raw-nul-in-string", b'"a\x00b"'),
    ("raw-newline-in-string", b'"a\nb"'),
    ("raw-tab-in-string", b'"a\tb"'),
    ("raw-control-after-escape", b'"\\n\x1f"'),
    ("unknown-escape", b'"\\x41"'),
    ("capital-u-escape", b'"\\U0041"'),
    ("short-u-escape", b'"\\u12"'),
    ("bad-hex-u-escape", b'"\\u12G4"'),
    ("bad-hex-after-high-surrogate", b'"\\ud83d\\uZZZZ"'),
    ("backslash-at-end", b'"\\'),
    ("unterminated-string", b'"abc'),
    ("unterminated-key", b'{"abc'),
    ("truncated-array", b"[1,2"),
    ("truncated-object-after-colon", b'{"a":'),
    ("truncated-object-after-key", b'{"a"'),
    ("truncated-object-after-value", b'{"a":1'),
    ("two-documents", b"{} {}"),
    ("two-numbers", b"1 2"),
    ("extra-closing-bracket", b"[]]"),
    ("extra-closing-brace", b'{"a":1}}'),
    ("mismatched-brackets", b"[}"),
    ("vertical-tab-whitespace", b"\x0b1"),
    ("form-feed-whitespace", b"\x0c1"),
    ("non-breaking-space-whitespace", "\u00a01".encode()),
    ("byte-order-mark", "\ufeff{}".encode()),
    ("comment", b"[1 /* c */]"),
    ("arrays-past-limit", b"[" * (MAX_DEPTH + 1) + b"1" + b"]" * (MAX_DEPTH + 1)),
    ("objects-past-limit", b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1)),
    ("arrays-100k-deep", b"[" * 100_000 + b"]" * 100_000),
    ("unclosed-100k-deep", b"[" * 100_000),
]


def python_rejects(text: bytes) -> bool:
    try:
        strict_loads(text)
    except (ValueError, RecursionError):
        return True
    return False


@pytest.mark.parametrize("text", [pytest.param(text, id=name) for name, text in INVALID_DOCS])
def test_invalid_documents_are_rejected(probe: extism.Plugin, text: bytes) -> None:
    # Beyond MAX_DEPTH Python may still parse; everything else must be invalid JSON for it too.
    assert text.count(b"[") + text.count(b"{") > MAX_DEPTH or python_rejects(text)
    assert call(probe, "roundtrip", text) == INVALID
    assert call(probe, "rebuild", text) == INVALID
    # A rejection leaves the instance usable (no trap, no state left behind).
    assert call(probe, "roundtrip", b'[{"ok":true}]') == b'[{"ok":true}]'


def test_raw_invalid_utf8_in_strings_is_not_checked(probe: extism.Plugin) -> None:
    # parseBytes checks JSON syntax only; the contract's Body.json() parses only bodies that are UTF-8.
    assert call(probe, "roundtrip", b'["\xff\xfe"]') == b'["\xff\xfe"]'


def test_typed_getters(probe: extism.Plugin) -> None:
    doc = (
        b'{"s":"12","n":-2.75,"big":9007199254740993,"huge":1e400,"e":1E+2,"t":true,"f":false,'
        b'"z":null,"l":["a",1,null,"\\u00e9"],"o":{"x":1}}'
    )
    got = strict_loads(call(probe, "typed", doc))
    fallback = {"getString": "fallback", "getNumber": -1, "asInteger": -1, "getBool": "fallback", "getStrings": []}

    def row(kind: str, length: int = 0, **values: Any) -> dict[str, Any]:
        return {"kind": kind, "has": True, **fallback, "length": length, **values}

    assert got == {
        "s": row("string", getString="12"),
        "n": row("number", getString="-2.75", getNumber=-2.75, asInteger=-2),
        # asNumber goes through f64, so beyond 2^53 it rounds; asInteger reads integer text exactly.
        "big": row("number", getString="9007199254740993", getNumber=9007199254740992, asInteger=9007199254740993),
        # Out of f64 range: an infinity (written as null, JSON having none) and a saturated integer.
        "huge": row("number", getString="1e400", getNumber=None, asInteger=2**63 - 1),
        "e": row("number", getString="1E+2", getNumber=100, asInteger=100),
        "t": row("bool", getBool="true"),
        "f": row("bool", getBool="false"),
        "z": row("null"),
        # getStrings reads every element as text: a number's text, "" for null.
        "l": row("array", length=4, getStrings=["a", "1", "", "\u00e9"]),
        "o": row("object", length=1),
        "absent": {**fallback, "kind": None, "has": False, "length": -1},
    }


AS_INTEGER = [
    ("beyond-2^53", b"9007199254740993", 9007199254740993),
    ("i64-max", b"9223372036854775807", 2**63 - 1),
    ("i64-min", b"-9223372036854775808", -(2**63)),
    ("negative-zero", b"-0", 0),
    # Not an integer i64 holds: through f64, truncated towards zero and saturated.
    ("just-over-i64-max", b"9223372036854775808", 2**63 - 1),
    ("just-under-i64-min", b"-9223372036854775809", -(2**63)),
    ("twenty-three-digits", b"12345678901234567890123", 2**63 - 1),
    ("fraction", b"12.7", 12),
    ("negative-fraction", b"-2.75", -2),
    ("exponent", b"1E+2", 100),
    ("integer-valued-exponent-beyond-2^53", b"9007199254740993e0", 9007199254740992),
    ("out-of-f64-range", b"-1e400", -(2**63)),
]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in AS_INTEGER], ids=[case[0] for case in AS_INTEGER])
def test_as_integer_is_exact_for_integer_text_and_saturates_otherwise(
    probe: extism.Plugin, text: bytes, expected: int
) -> None:
    assert strict_loads(call(probe, "typed", b'{"v":' + text + b"}"))["v"]["asInteger"] == expected


def test_typed_rejects_a_document_that_is_not_an_object(probe: extism.Plugin) -> None:
    assert call(probe, "typed", b"[1]") == INVALID


EDITS: list[tuple[str, dict[str, Any], list[list[Any]], dict[str, Any], list[bool]]] = [
    ("set-new-appends", {"a": 1}, [["set", "b", 2]], {"a": 1, "b": 2}, [True]),
    ("set-existing-keeps-position", {"a": 1, "b": 2}, [["set", "a", [3]]], {"a": [3], "b": 2}, [True]),
    ("remove", {"a": 1, "b": 2, "c": 3}, [["remove", "b"]], {"a": 1, "c": 3}, [True]),
    ("remove-absent", {"a": 1}, [["remove", "b"]], {"a": 1}, [False]),
    ("rename-in-place", {"a": 1, "b": 2, "c": 3}, [["rename", "a", "x"]], {"x": 1, "b": 2, "c": 3}, [True]),
    ("rename-absent", {"a": 1}, [["rename", "b", "c"]], {"a": 1}, [False]),
    ("rename-to-itself", {"a": 1, "b": 2}, [["rename", "a", "a"]], {"a": 1, "b": 2}, [True]),
    # The renamed member keeps its own position; the member it replaces disappears.
    ("rename-over-earlier", {"a": 1, "b": 2, "c": 3}, [["rename", "c", "a"]], {"b": 2, "a": 3}, [True]),
    ("rename-over-later", {"a": 1, "b": 2, "c": 3}, [["rename", "a", "c"]], {"c": 1, "b": 2}, [True]),
    (
        "sequence",
        {"a": 1},
        [["set", "b", None], ["remove", "a"], ["set", "a", "x"], ["rename", "b", "c"], ["remove", "a"]],
        {"c": None},
        [True, True, True, True, True],
    ),
]


@pytest.mark.parametrize(("doc", "ops", "expected", "results"), [pytest.param(*case[1:], id=case[0]) for case in EDITS])
def test_edits(
    probe: extism.Plugin, doc: dict[str, Any], ops: list[list[Any]], expected: dict[str, Any], results: list[bool]
) -> None:
    out = call(probe, "edit", json.dumps({"doc": doc, "ops": ops}).encode())
    got = json.loads(out.decode(), object_pairs_hook=list)
    assert got == [("doc", list(expected.items())), ("results", results)]


AS_NUMBER_TEXT = {"9007199254740992": "9007199254740992.0"}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-42.0, "-42"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (-123.456, "-123.456"),
        (2.0**53 - 1, "9007199254740991"),
        (2.0**53, "9007199254740992"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        # JSON has no NaN or infinities: like JSON.stringify, the SDK writes null.
        (float("nan"), "null"),
        (float("inf"), "null"),
        (float("-inf"), "null"),
    ],
)
def test_number_writes_json(sdk: str, probe: extism.Plugin, value: float, text: str) -> None:
    out = call(probe, "number", struct.pack("<d", value))
    # JavaScript writes 2^53 as "9007199254740992"; AssemblyScript's f64.toString adds ".0" to an integer.
    assert out.decode() == (AS_NUMBER_TEXT.get(text, text) if sdk == "assemblyscript" else text)
    assert strict_loads(out) == (value if math.isfinite(value) else None)


@pytest.mark.parametrize("value", [0, 1, -1, 2**53 + 1, 2**63 - 1, -(2**63)])
def test_integer_writes_every_digit(probe: extism.Plugin, value: int) -> None:
    assert call(probe, "integer", struct.pack("<q", value)) == str(value).encode()


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("", '""'),
        ("plain", '"plain"'),
        ('q"b\\s/', '"q\\"b\\\\s/"'),
        ("\n\r\t\b\f\x00\x1f\x7f", '"\\n\\r\\t\\u0008\\u000c\\u0000\\u001f\x7f"'),
        ("h\u00e9 \u4e16 \U0001f600", '"h\u00e9 \u4e16 \U0001f600"'),
    ],
)
def test_quote(probe: extism.Plugin, text: str, quoted: str) -> None:
    out = call(probe, "quote", text.encode())
    assert out.decode() == quoted
    assert strict_loads(out) == text


@pytest.mark.parametrize("data", [b"", b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar", bytes(range(256))])
def test_base64_matches_python(probe: extism.Plugin, data: bytes) -> None:
    encoded = call(probe, "b64encode", data)
    assert encoded == base64.b64encode(data)
    assert call(probe, "b64decode", encoded) == data


@pytest.mark.parametrize("text", [b"A", b"AB", b"ABC", b"A===", b"AB=C", b"=AAA", b"AB C", b"AB-_", b"AB\xc3\xa9"])
def test_base64_rejects(probe: extism.Plugin, text: bytes) -> None:
    assert call(probe, "b64decode", text) == INVALID


def test_header_bytes_read_and_written_exactly(probe: extism.Plugin) -> None:
    """The SDK reads `raw_value` and writes exact bytes back in a form the server decodes to the same bytes."""
    latin1, utf8 = b"caf\xe9", "café".encode()
    headers = [
        {"name": "x-raw", "value": "caf\ufffd", "raw_value": base64.b64encode(latin1).decode()},
        {"name": "x-raw", "value": "plain"},
        {"name": "x-text", "value": "café"},
    ]
    out = call(probe, "header_bytes", json.dumps({"headers": headers}).encode())
    output = decode_json(out)
    assert output is not None and output.headers is not None and output.immediate is not None
    every = [("x-raw", latin1), ("x-raw", b"plain"), ("x-text", utf8)]
    assert [(n, value_bytes(v)) for n, v in output.headers.set] == [("x-raw", latin1), ("x-text", utf8)]
    assert [(n, value_bytes(v)) for n, v in output.headers.append] == every
    assert [(n, value_bytes(v)) for n, v in output.immediate.headers] == every
    # Bytes that are UTF-8 go out as readable text; only the others need raw_value.
    written = json.loads(out)["headers"]["append"]
    assert written == [
        {"name": "x-raw", "raw_value": base64.b64encode(latin1).decode()},
        {"name": "x-raw", "value": "plain"},
        {"name": "x-text", "value": "café"},
    ]


STREAM_INPUTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "absent-fields-read-as-defaults",
        {"phase": "REQUEST_HEADERS", "request": {"headers": []}},
        {"chunk_index": 0, "end_of_stream": False, "route": {}, "trailers": None},
    ),
    (
        "chunk-with-text-state",
        {
            "phase": "REQUEST_BODY_CHUNK",
            "request": {"body": {"text": 'a "chunk"\n'}},
            "state": {"text": "h01"},
            "chunk_index": 7,
            "end_of_stream": True,
            "route": {"tier": "gold", "limits": {"rps": 5}},
        },
        {"chunk_index": 7, "end_of_stream": True, "route": {"tier": "gold", "limits": {"rps": 5}}, "trailers": None},
    ),
    (
        "trailers-and-bytes-state",
        {
            "phase": "RESPONSE_TRAILERS",
            "request": {"trailers": []},
            "response": {"status": 200, "trailers": [{"name": "grpc-status", "value": "0"}]},
            "state": {"data": base64.b64encode(b"\x00\xff\xfe").decode()},
        },
        {"chunk_index": 0, "end_of_stream": False, "route": {}, "trailers": ["response grpc-status=0"]},
    ),
    (
        "bytes-body-chunk",
        {"phase": "REQUEST_BODY_CHUNK", "request": {"body": {"data": base64.b64encode(b"\xc3\x28\x00ok").decode()}}},
        {"chunk_index": 0, "end_of_stream": False, "route": {}, "trailers": None},
    ),
]


@pytest.mark.parametrize(("data", "fields"), [c[1:] for c in STREAM_INPUTS], ids=[c[0] for c in STREAM_INPUTS])
def test_streaming_fields_read_and_state_written_back(
    probe: extism.Plugin, data: dict[str, Any], fields: dict[str, Any]
) -> None:
    """Chunk index, end of stream, route values, trailers (absent, empty, present) and state (text or bytes) read
    through the SDK's run(); the state and a body written back decode to the bytes that came in."""
    out = call(probe, "stream_fields", json.dumps(data).encode())
    output = decode_json(out)
    assert output is not None
    state = data.get("state")
    expected_state = (
        None if state is None else state["text"].encode() if "text" in state else base64.b64decode(state["data"])
    )
    if state is not None:
        fields = fields | {"state_is_text": "text" in state}
    assert output.metadata == fields
    assert output.state == expected_state
    body = data["request"].get("body")
    assert output.body == (
        None if body is None else body["text"].encode() if "text" in body else base64.b64decode(body["data"])
    )
