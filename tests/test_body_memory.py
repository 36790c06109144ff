"""Bodies in bounded memory: a plugin of any SDK (AssemblyScript, Rust, C) that reads and rewrites a body needs at
most four times the body plus a small constant, the default memory_limit_mb fits max_body_bytes, and `extproc check`
warns about a body plugin whose limit does not.

How memory is measured (extproc.plugin_tools.call_memory_mb): the smallest memory_limit_mb under which the call
succeeds on a fresh instance, found by bisection. Extism counts against that limit every page the instance's
memories grow by, the plugin's linear memory and Extism's own (which holds the input and the output), and Wasm
memory never shrinks: the smallest passing limit is the call's peak, in whole MiB, as the server enforces it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import extism
import pytest

from extproc.config import ServerConfig, default_memory_limit_mb
from extproc.contract import MessageView, build_input
from extproc.errors import FailureKind, PluginCallError
from extproc.phases import Phase
from extproc.plugin_tools import call_memory_mb
from extproc.testing import PluginHarness, plugin_config
from scripts import sdk_build
from support.npm import npm
from tests.examples_build import EXAMPLES_DIR, REPO_ROOT, ensure_installed, example_wasm
from tests.test_sdk_json import valid_cases

MIB = 1024 * 1024
# What "a small constant" is: the runtime, the input's headers, the parsed config.
CONSTANT_MB = 2
PROBE_SOURCE = REPO_ROOT / "sdk" / "assemblyscript" / "tests" / "body_probe.ts"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ensure_installed()
    wasm = tmp_path_factory.mktemp("body-memory") / "body_probe.wasm"
    npm(["exec", "--", "extproc-build", str(PROBE_SOURCE), "-o", str(wasm)], EXAMPLES_DIR)
    return wasm


def json_body(size: int) -> bytes:
    """A JSON document of `size` bytes, most of them in one string field."""
    head = b'{"name":"Ada","ssn":"123-45-6789","notes":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def text_body(size: int) -> bytes:
    """Text of `size` bytes in which "Ada" occurs every 64 bytes."""
    line = b"Ada wrote the first program for the Analytical Engine, in 1843.\n"
    return (line * (size // len(line) + 1))[:size]


REQUEST = [(":method", "POST"), (":path", "/users"), ("content-type", "application/json")]


def request_body_input(body: bytes) -> dict[str, Any]:
    return build_input(Phase.REQUEST_BODY, "probe", MessageView(REQUEST, body), None, {}, {})


def response_body_input(body: bytes) -> dict[str, Any]:
    response = MessageView([(":status", "200"), ("content-type", "text/plain")], body)
    return build_input(Phase.RESPONSE_BODY, "probe", MessageView(REQUEST), response, {}, {})


def uppercased(body: bytes) -> bytes:
    doc = json.loads(body)
    doc["name"] = doc["name"].upper()
    return json.dumps(doc, separators=(",", ":")).encode()


def redacted(body: bytes) -> bytes:
    doc = json.loads(body)
    del doc["ssn"]
    return json.dumps(doc, separators=(",", ":")).encode()


REDACT_SSN = {"request": {"redact": ["ssn"]}}

# (plugin (None: the probe), its config, export, input for a body, the body the plugin should make of it)
REWRITES = {
    "uppercase-a-json-field": (None, None, Phase.REQUEST_BODY, json_body, request_body_input, uppercased),
    "replace-text": (
        None,
        None,
        Phase.RESPONSE_BODY,
        text_body,
        response_body_input,
        lambda body: body.replace(b"Ada", b"Eve"),
    ),
    "json-transform-redacts": (
        example_wasm("json-transform"),
        REDACT_SSN,
        Phase.REQUEST_BODY,
        json_body,
        request_body_input,
        redacted,
    ),
    **{
        f"{language}_sdk-json-transform-redacts": (
            sdk_build.example_wasm(language, "json-transform"),
            REDACT_SSN,
            Phase.REQUEST_BODY,
            json_body,
            request_body_input,
            redacted,
        )
        for language in ("rust", "c")
    },
}


@pytest.mark.parametrize("body_mib", [1, 5])
@pytest.mark.parametrize(
    ("example", "config", "export", "make_body", "make_input", "rewrite"), REWRITES.values(), ids=REWRITES
)
def test_a_body_rewrite_needs_at_most_four_times_the_body(
    probe: Path,
    body_mib: int,
    example: Path | None,
    config: dict[str, Any] | None,
    export: Phase,
    make_body: Any,
    make_input: Any,
    rewrite: Any,
) -> None:
    wasm = probe if example is None else example
    body = make_body(body_mib * MIB)
    payload = make_input(body)
    # The rewrite is the one asked for: the memory measured is that of real work.
    with PluginHarness(wasm, config=config, memory_limit_mb=256, timeout_ms=60_000) as harness:
        output = asyncio.run(harness.plugin.call(export, payload))
    assert output is not None and output.body == rewrite(body)

    server = dataclasses.replace(ServerConfig(), max_body_bytes=8 * MIB)
    spec = plugin_config(wasm, config=config).plugins[0]
    needs = call_memory_mb(spec, server, export, payload)
    print(f"{wasm.name} {export.value}, {body_mib} MiB body: needs memory_limit_mb {needs}")
    assert needs <= 4 * body_mib + CONSTANT_MB
    # The default for a server whose bodies are this large covers it.
    assert needs <= default_memory_limit_mb(body_mib * MIB)


def records_body(size: int) -> bytes:
    """A JSON document of about `size` bytes made of small records, the shape that costs a parsed document most."""
    record = {"id": 1234, "name": "user1234", "email": "user1234@example.com", "active": True, "ssn": "123-45-6789"}
    line = json.dumps(record, separators=(",", ":"))
    return b'{"items":[' + ",".join([line] * (size // (len(line) + 1))).encode() + b"]}"


def redacted_everywhere(body: bytes) -> bytes:
    doc = json.loads(body)
    for item in doc["items"]:
        del item["ssn"]
    return json.dumps(doc, separators=(",", ":")).encode()


# Measured: AssemblyScript 12 (23 before member names were shared and removal stopped allocating), Rust 7, C 8.
RECORDS_TIMES_THE_BODY = 12


@pytest.mark.parametrize(
    "wasm",
    [
        example_wasm("json-transform"),
        *(sdk_build.example_wasm(language, "json-transform") for language in ("rust", "c")),
    ],
    ids=["assemblyscript", "rust_sdk", "c_sdk"],
)
def test_a_document_of_small_records_needs_a_bounded_multiple_of_the_body(wasm: Path) -> None:
    body = records_body(MIB)
    payload = request_body_input(body)
    with PluginHarness(wasm, config=REDACT_SSN, memory_limit_mb=256, timeout_ms=60_000) as harness:
        output = asyncio.run(harness.plugin.call(Phase.REQUEST_BODY, payload))
    assert output is not None and output.body == redacted_everywhere(body)

    spec = plugin_config(wasm, config=REDACT_SSN).plugins[0]
    needs = call_memory_mb(spec, ServerConfig(), Phase.REQUEST_BODY, payload)
    print(f"{wasm} records, 1 MiB body: needs memory_limit_mb {needs}")
    assert needs <= RECORDS_TIMES_THE_BODY + CONSTANT_MB


def test_the_measured_memory_is_the_limit_the_call_needs(probe: Path) -> None:
    payload = response_body_input(text_body(MIB))
    spec = plugin_config(probe).plugins[0]
    needs = call_memory_mb(spec, ServerConfig(), Phase.RESPONSE_BODY, payload)
    with PluginHarness(probe, memory_limit_mb=needs) as harness:
        assert asyncio.run(harness.plugin.call(Phase.RESPONSE_BODY, payload)) is not None
    with PluginHarness(probe, memory_limit_mb=needs - 1) as harness, pytest.raises(PluginCallError) as failed:
        asyncio.run(harness.plugin.call(Phase.RESPONSE_BODY, payload))
    assert failed.value.kind is FailureKind.MEMORY


# Bodies whose input JSON has every kind of escape, and one sent as base64: the SDK decodes them in place.
ESCAPED_BODIES = {
    "quotes-and-backslashes": b'Ada said "\\\\ is a backslash" and Ada left',
    "control-characters": b"Ada\x00\x01\x1f\x7f\tAda\r\n\x08\x0c",
    "non-ascii": "Zoë 😀 Ada ünïcode Ada".encode(),
    "not-utf8": b"Ada\xff\xfe\x00Ada\xc3",
    "escape-at-the-end": b'Ada "',
}


# A document whose strings hold bytes that are not UTF-8 (parsing does not check them) goes out as bytes.
DOCUMENTS_NOT_UTF8 = [
    pytest.param(b'"\xff"', b'"\xff"', id="string-not-utf8"),
    pytest.param(b'{"a":["ok","\xc3"]}', b'{"a":["ok","\xc3"]}', id="nested-string-not-utf8"),
]


@pytest.mark.parametrize(("text", "expected"), [*valid_cases(), *DOCUMENTS_NOT_UTF8])
def test_a_document_set_as_the_body_goes_out_exactly_as_the_writer_writes_it(
    probe: Path, text: bytes, expected: bytes
) -> None:
    # The document is written straight into the output as the text of its body, escaped on the way.
    with extism.Plugin(probe.read_bytes(), wasi=False) as plugin:
        output = json.loads(plugin.call("same_document", json.dumps(request_body_input(text))))
    body = output["body"]
    assert (body["text"].encode() if "text" in body else base64.b64decode(body["data"])) == expected


@pytest.mark.parametrize("body", ESCAPED_BODIES.values(), ids=ESCAPED_BODIES)
def test_bodies_survive_the_parse_in_place(probe: Path, body: bytes) -> None:
    with PluginHarness(probe) as harness:
        output = asyncio.run(harness.plugin.call(Phase.RESPONSE_BODY, response_body_input(body)))
    assert output is not None and output.body == body.replace(b"Ada", b"Eve")
