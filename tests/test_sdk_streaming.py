"""The Rust and C SDKs' streaming surface through the server's stream code: chunk index and end of stream, bodies
replaced chunk by chunk, trailers read and changed, state across phases and chunks, route values and declared
phases. Each SDK's stream probe (sdk/rust/stream-probe, sdk/c/tests/stream_probe.c) runs the same checks; test ids
name the SDK (rust_sdk, c_sdk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from extproc.phases import Phase
from extproc.plugins.loader import PhaseSource
from extproc.testing import PluginHarness, assert_cases, request, response
from scripts import sdk_build

CASES = sdk_build.REPO_ROOT / "sdk" / "stream-probe.CASES.yaml"
each_sdk = pytest.mark.parametrize("language", ["rust", "c"], ids=["rust_sdk", "c_sdk"])

EXPORTED = {
    Phase.REQUEST_HEADERS,
    Phase.REQUEST_BODY_CHUNK,
    Phase.REQUEST_TRAILERS,
    Phase.RESPONSE_HEADERS,
    Phase.RESPONSE_BODY_CHUNK,
    Phase.RESPONSE_TRAILERS,
}


def probe(language: str) -> Path:
    return sdk_build.probe_wasm(language, "stream")


@each_sdk
def test_the_stream_probe_passes_its_cases(language: str) -> None:
    assert_cases(probe(language), CASES)


@pytest.mark.parametrize(
    ("config", "phases"),
    [
        (None, EXPORTED),
        ({"phases": ["request_headers", "response_trailers"]}, {Phase.REQUEST_HEADERS, Phase.RESPONSE_TRAILERS}),
        ({"phases": []}, set()),
    ],
    ids=["every-export", "two", "none"],
)
@each_sdk
def test_the_declared_phases_are_the_ones_called(
    language: str, config: dict[str, Any] | None, phases: set[Phase]
) -> None:
    with PluginHarness(probe(language), config=config) as harness:
        assert harness.plugin.exports == phases
        assert harness.plugin.phase_source is PhaseSource.DECLARED
        result = harness.run(
            request("POST", "/", chunks=["a"], trailers={"x-t": "1"}), response(chunks=["b"], trailers={"x-u": "2"})
        )
    assert result.upstream is not None and result.response is not None
    # Each phase's mark, seen only when the probe ran in that phase.
    marks = {
        Phase.REQUEST_HEADERS: result.upstream.header("x-route") is not None,
        Phase.REQUEST_BODY_CHUNK: result.upstream.body.startswith(b"<0"),
        Phase.REQUEST_TRAILERS: result.upstream.trailer("x-state") is not None,
        Phase.RESPONSE_HEADERS: result.response.header("x-state") is not None,
        Phase.RESPONSE_BODY_CHUNK: result.response.body.startswith(b"<0"),
        Phase.RESPONSE_TRAILERS: result.response.trailer("x-state") is not None,
    }
    assert {phase for phase, seen in marks.items() if seen} == phases


@each_sdk
def test_a_whole_body_reaches_a_chunk_plugin_as_one_last_chunk(language: str) -> None:
    # A body sent whole (one read of it) is chunk 0 and the last.
    with PluginHarness(probe(language)) as harness:
        result = harness.run(request("POST", "/", body="whole"), response(body="answer"))
    assert result.upstream is not None and result.upstream.body == b"<0$>WHOLE"
    assert result.response is not None and result.response.body == b"<0$>ANSWER"
