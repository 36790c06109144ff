"""Which phases a plugin is called for: execution_points, the plugin's own declaration, or its exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extproc.config import Encoding, parse_config
from extproc.errors import PluginLoadError
from extproc.phases import Phase
from extproc.plugins import loader
from extproc.plugins.loader import LoadedPlugin, PhaseSource, load_plugin
from extproc.plugins.registry import PluginSet
from extproc.plugins.runner import shared_threads
from extproc.plugins.store import MemoryStore
from extproc.testing import PluginHarness, exchange, request, response
from support.plugins import scripted
from tests.examples_build import example_wasm


def loaded(tmp_path: Path, wasm: Path, **fields: Any) -> LoadedPlugin:
    config = parse_config({"plugins": [{"name": "p", "path": str(wasm), **fields}]}, tmp_path / "c.yaml")
    return load_plugin(config.plugins[0], config.server, shared_threads(), MemoryStore())


# Every phase but the chunk and trailers ones (tests/plugins/README.md).
SCRIPTED_EXPORTS = {
    Phase.REQUEST_HEADERS,
    Phase.REQUEST_BODY,
    Phase.GENERATE_RESPONSE,
    Phase.RESPONSE_HEADERS,
    Phase.RESPONSE_BODY,
}


def declaring(plugin_dir: Path, declaration: object, name: str = "p", **fields: Any) -> dict[str, Any]:
    """The scripted plugin declaring `declaration` (its JSON) from declare_phases."""
    return scripted(plugin_dir, name, declare_phases=declaration) | fields


@pytest.mark.parametrize(
    ("declaration", "fields", "phases", "source"),
    [
        ({"phases": ["request_headers"]}, {}, {Phase.REQUEST_HEADERS}, PhaseSource.DECLARED),
        ({"phases": []}, {}, set(), PhaseSource.DECLARED),
        (
            {"phases": ["request_headers"]},
            {"execution_points": ["response_headers"]},
            {Phase.RESPONSE_HEADERS},
            PhaseSource.EXECUTION_POINTS,
        ),
        (None, {}, SCRIPTED_EXPORTS, PhaseSource.EXPORTS),
    ],
    ids=["declared", "declared-none", "execution-points-win", "empty-answer-declares-nothing"],
)
def test_where_the_phases_come_from(
    tmp_path: Path,
    plugin_dir: Path,
    declaration: object,
    fields: dict[str, Any],
    phases: set[Phase],
    source: PhaseSource,
) -> None:
    entry = {"path": str(plugin_dir / "scripted.wasm")} if declaration is None else declaring(plugin_dir, declaration)
    entry.pop("name", None)
    plugin = loaded(tmp_path, Path(entry.pop("path")), **entry, **fields)
    assert (set(plugin.exports), plugin.phase_source) == (phases, source)


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ({"phases": ["request_footers"]}, "declare_phases output: phases[0]: 'request_footers' is not a phase"),
        ({"phases": "request_headers"}, "declare_phases output: phases: must be a list of phase names"),
        ({"phases": [], "more": 1}, 'declare_phases output: must be {"phases": [...]} and nothing else'),
        ([1], 'declare_phases output: must be {"phases": [...]} and nothing else'),
    ],
    ids=["unknown-phase", "not-a-list", "extra-member", "not-an-object"],
)
def test_a_bad_declaration_fails_the_load_naming_the_plugin(
    tmp_path: Path, plugin_dir: Path, declaration: object, message: str
) -> None:
    entry = declaring(plugin_dir, declaration)
    entry.pop("name")
    with pytest.raises(PluginLoadError, match="plugin 'p'") as info:
        loaded(tmp_path, Path(entry.pop("path")), **entry)
    assert message in str(info.value)


def test_a_declared_phase_the_module_lacks_fails_the_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # api-key exports process_request_headers only; make its declaration name a phase it cannot serve.
    encode, decode, _ = loader._CODECS[Encoding.JSON]
    monkeypatch.setitem(loader._CODECS, Encoding.JSON, (encode, decode, lambda raw: frozenset({Phase.RESPONSE_BODY})))
    with pytest.raises(PluginLoadError) as info:
        loaded(tmp_path, example_wasm("api-key"), config={"keys": ["k"]})
    assert "declare_phases names phase 'response_body' needs export 'process_response_body', which is missing" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("config", "phases"),
    [
        ({"request": {"set": {"x-a": "1"}}}, {Phase.REQUEST_HEADERS}),
        ({"response": {"set": {"x-a": "1"}}}, {Phase.RESPONSE_HEADERS}),
        ({"request": {}, "response": {}}, {Phase.REQUEST_HEADERS, Phase.RESPONSE_HEADERS}),
        ({}, set()),
    ],
    ids=["request-only", "response-only", "both", "neither"],
)
def test_header_rewrite_declares_the_sides_its_config_rewrites(
    tmp_path: Path, config: dict[str, Any], phases: set[Phase]
) -> None:
    assert loaded(tmp_path, example_wasm("header-rewrite"), config=config).exports == phases


def test_a_request_only_config_asks_envoy_for_no_response_phase(tmp_path: Path) -> None:
    config = {"request": {"set": {"x-team": "payments"}}}
    with PluginHarness(example_wasm("header-rewrite"), config=config) as harness:
        result = harness.run(request("GET", "/"), response(200))
    assert result.phases == ("request_headers",)
    assert result.upstream is not None and result.upstream.header("x-team") == "payments"


def test_chained_plugins_get_the_union_of_what_they_declare(tmp_path: Path, plugin_dir: Path) -> None:
    first = declaring(plugin_dir, {"phases": ["request_headers"]}, "first")
    second = declaring(plugin_dir, {"phases": ["response_body"]}, "second")
    config = parse_config({"plugins": [first, second]}, tmp_path / "c.yaml")
    plugins = PluginSet.load(config, shared_threads())
    try:
        selection = plugins.select("GET", "/", "", [])
        assert (selection.request_body, selection.response_headers, selection.response_body) == (False, True, True)
        result = exchange(plugins, request("GET", "/"), response(200, body=b"hi"))
        assert result.phases == ("request_headers", "response_headers", "response_body")
    finally:
        plugins.close()


def test_request_body_for_a_generate_only_module_calls_it_with_the_body(tmp_path: Path, plugin_dir: Path) -> None:
    # echo.wasm exports only generate_response and answers with its whole input.
    with PluginHarness(plugin_dir / "echo.wasm", execution_points=["request_body"]) as harness:
        assert harness.plugin.exports == {Phase.GENERATE_RESPONSE}
        assert harness.plugin.request_body_phases == {Phase.GENERATE_RESPONSE}
        result = harness.run(request("POST", "/order", body=b"hello body"))
    assert result.immediate and result.response is not None
    echoed = json.loads(result.response.body)
    assert echoed["phase"] == "GENERATE_RESPONSE"
    assert echoed["request"]["body"] == {"text": "hello body"}
    assert result.phases == ("request_headers", "request_body")
