"""The five plugin capabilities, proved through a real Envoy, our server and a real upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from support.bootstrap import EXT_PROC_STATS
from support.plugins import scripted

from .conftest import StackFactory
from .harness import Upstream, request

pytestmark = pytest.mark.e2e


def plugin(name: str, wasm: Path, **fields: Any) -> dict[str, Any]:
    return {"name": name, "path": str(wasm), **fields}


def config_yaml(*plugins: dict[str, Any]) -> str:
    return json.dumps({"plugins": list(plugins)})  # JSON is YAML


def upstream_headers(body: bytes) -> list[tuple[str, str]]:
    return [(name, value) for name, value in json.loads(body)["headers"]]


def test_modify_request_headers(plugin_dir: Path, make_stack: StackFactory) -> None:
    output = {"headers": {"set": [{"name": "x-added", "value": "yes"}], "remove": ["x-drop"]}}
    with make_stack(config_yaml(scripted(plugin_dir, "hdr", process_request_headers=output))) as stack:
        response = request("GET", f"{stack.url}/echo", headers=[("x-drop", "1"), ("x-keep", "2")])
    assert response.status == 200
    seen = upstream_headers(response.body)
    assert ("x-added", "yes") in seen
    assert ("x-keep", "2") in seen
    assert all(name != "x-drop" for name, _ in seen)


def test_modify_request_headers_and_body(plugin_dir: Path, make_stack: StackFactory) -> None:
    transform = plugin("t", plugin_dir / "transform.wasm", config={"suffix": " + plugin"})
    with make_stack(config_yaml(transform)) as stack:
        response = request("POST", f"{stack.url}/submit", body=b"original")
    assert response.status == 200
    echoed = json.loads(response.body)
    assert echoed["body"] == "original + plugin"
    assert echoed["body_length"] == len("original + plugin")
    assert ("x-seen-path", "/submit") in upstream_headers(response.body)


def test_modify_response_headers_keeps_repeated_headers(plugin_dir: Path, make_stack: StackFactory) -> None:
    output = {
        "headers": {"set": [{"name": "x-resp", "value": "1"}], "append": [{"name": "set-cookie", "value": "c=3"}]}
    }
    with make_stack(config_yaml(scripted(plugin_dir, "resp", process_response_headers=output))) as stack:
        response = request("GET", f"{stack.url}/set-cookie")
    assert response.status == 200
    assert response.header("x-resp") == "1"
    assert response.header_values("set-cookie") == ["a=1", "b=2", "c=3"]


def test_modify_response_headers_and_body(plugin_dir: Path, make_stack: StackFactory) -> None:
    transform = plugin("t", plugin_dir / "transform.wasm", config={"prefix": "<<"})
    with make_stack(config_yaml(transform)) as stack:
        response = request("GET", f"{stack.url}/text?body=hello")
    assert response.status == 200
    assert response.body == b"<<hello"
    assert response.header("x-upstream-status") == "200"
    # The server gives Envoy the new body's length along with the new body.
    assert response.header("content-length") == str(len(b"<<hello"))


def test_generated_response_never_reaches_upstream(
    plugin_dir: Path, make_stack: StackFactory, upstream: Upstream
) -> None:
    echo = plugin("echo", plugin_dir / "echo.wasm", match={"path_prefix": "/generated"})
    with make_stack(config_yaml(echo)) as stack:
        before = upstream.count()
        response = request("GET", f"{stack.url}/generated/x?q=1", headers=[("cookie", "a=1"), ("cookie", "b=2")])
        after = upstream.count()
    assert response.status == 200
    assert after == before
    seen = json.loads(response.body)
    assert seen["phase"] == "GENERATE_RESPONSE"
    assert seen["plugin_name"] == "echo"
    assert seen["request"]["method"] == "GET"
    assert seen["request"]["path"] == "/generated/x?q=1"
    cookies = [h["value"] for h in seen["request"]["headers"] if h["name"] == "cookie"]
    assert cookies == ["a=1", "b=2"]
    # Envoy's attributes reach the plugin: the client's address and the request's id.
    request_ids = [h["value"] for h in seen["request"]["headers"] if h["name"] == "x-request-id"]
    assert seen["attributes"]["source.address"].startswith("127.0.0.1:")
    assert [seen["attributes"]["request.id"]] == request_ids


def test_two_plugins_chain_in_config_order(plugin_dir: Path, make_stack: StackFactory) -> None:
    first = plugin("a", plugin_dir / "transform.wasm", config={"tag": "first", "suffix": "-a"})
    second = plugin("b", plugin_dir / "transform.wasm", config={"tag": "second", "suffix": "-b"})
    with make_stack(config_yaml(first, second)) as stack:
        response = request("POST", f"{stack.url}/chain", body=b"body")
    assert response.status == 200
    echoed = json.loads(response.body)
    assert echoed["body"] == "body-a-b"
    assert [v for n, v in upstream_headers(response.body) if n == "x-chain"] == ["first", "second"]
    assert response.header_values("x-chain") == ["first", "second"]


def test_match_rules_limit_a_plugin(plugin_dir: Path, make_stack: StackFactory) -> None:
    output = {"headers": {"set": [{"name": "x-matched", "value": "1"}]}}
    limited = scripted(plugin_dir, "limited", process_request_headers=output)
    limited["match"] = {"path_prefix": "/api", "methods": ["POST"]}
    with make_stack(config_yaml(limited)) as stack:
        hit = request("POST", f"{stack.url}/api/x", body=b"")
        wrong_method = request("GET", f"{stack.url}/api/x")
        wrong_path = request("POST", f"{stack.url}/other", body=b"")
    assert [hit.status, wrong_method.status, wrong_path.status] == [200, 200, 200]
    assert ("x-matched", "1") in upstream_headers(hit.body)
    assert "x-matched" not in dict(upstream_headers(wrong_method.body))
    assert "x-matched" not in dict(upstream_headers(wrong_path.body))


def test_one_mebibyte_body(plugin_dir: Path, make_stack: StackFactory) -> None:
    # AssemblyScript holds the body several times over (JSON text, UTF-16 strings): give it room.
    transform = plugin("t", plugin_dir / "transform.wasm", config={"suffix": "!"}, memory_limit_mb=64, timeout_ms=5000)
    body = b"x" * (1024 * 1024)
    with make_stack(config_yaml(transform)) as stack:
        response = request("POST", f"{stack.url}/big", body=body)
    assert response.status == 200
    echoed = json.loads(response.body)
    assert echoed["body_length"] == len(body) + 1
    assert echoed["body"] == "x" * len(body) + "!"


def test_request_matching_no_plugin_costs_one_message(plugin_dir: Path, make_stack: StackFactory) -> None:
    output = {"headers": {"set": [{"name": "x-matched", "value": "1"}]}}
    limited = scripted(
        plugin_dir, "limited", process_request_headers=output, process_response_headers=output, process_request_body={}
    )
    limited["match"] = {"path_prefix": "/only-here"}
    with make_stack(config_yaml(limited)) as stack:
        response = request("POST", f"{stack.url}/elsewhere", body=b"data")
        sent = stack.envoy_stats(EXT_PROC_STATS + ".")
    assert response.status == 200
    assert json.loads(response.body)["body"] == "data"
    assert "x-matched" not in dict(upstream_headers(response.body))
    assert sent[f"{EXT_PROC_STATS}.streams_started"] == 1
    # Only the request headers went to the server: no body, no response phases.
    assert sent[f"{EXT_PROC_STATS}.stream_msgs_sent"] == 1


@pytest.mark.parametrize(
    ("body_mode", "allow_mode_override"),
    [("STREAMED", False), ("STREAMED", True), ("BUFFERED_PARTIAL", False)],
    ids=["streamed", "streamed-with-override", "buffered-partial"],
)
def test_body_plugin_under_each_body_mode(
    plugin_dir: Path, make_stack: StackFactory, body_mode: str, allow_mode_override: bool
) -> None:
    """Whatever Envoy's body mode (and whether it takes our override), the plugin gets the whole body once."""
    transform = plugin(
        "t",
        plugin_dir / "transform.wasm",
        execution_points=["request_body"],
        config={"suffix": "!!"},
        memory_limit_mb=64,
        timeout_ms=5000,
    )
    body = b"x" * 200_000  # several chunks in streamed mode
    with make_stack(
        config_yaml(transform), request_body_mode=body_mode, allow_mode_override=allow_mode_override
    ) as stack:
        response = request("POST", f"{stack.url}/modes", body=body)
    assert response.status == 200
    echoed = json.loads(response.body)
    assert echoed["body_length"] == len(body) + 2
    assert echoed["body"] == "x" * len(body) + "!!"


def test_streams_the_server_ends_early_are_clean_closes_for_envoy(plugin_dir: Path, make_stack: StackFactory) -> None:
    """The server ends a stream once no plugin needs more (a header-only exchange, an immediate
    response, a request no plugin matches); Envoy must carry on, counting no failed stream."""
    added = {"headers": {"set": [{"name": "x-added", "value": "yes"}]}}
    header = scripted(plugin_dir, "hdr", process_request_headers=added) | {"match": {"path_prefix": "/echo"}}
    deny = scripted(plugin_dir, "deny", generate_response={"immediate_response": {"status": 403}}) | {
        "match": {"path_prefix": "/deny"}
    }
    with make_stack(config_yaml(header, deny)) as stack:
        echoed = [request("GET", f"{stack.url}/echo") for _ in range(5)]
        denied = [request("GET", f"{stack.url}/deny") for _ in range(5)]
        unmatched = [request("GET", f"{stack.url}/text?body=x") for _ in range(5)]
        stats = stack.envoy_stats(EXT_PROC_STATS + ".")
    assert all(r.status == 200 and ("x-added", "yes") in upstream_headers(r.body) for r in echoed)
    assert [r.status for r in denied] == [403] * 5
    assert [(r.status, r.body) for r in unmatched] == [(200, b"x")] * 5
    assert stats[f"{EXT_PROC_STATS}.streams_started"] == 15
    # Envoy lists its counters from the filter's start, so a misspelled name fails here instead of reading 0.
    assert stats[f"{EXT_PROC_STATS}.streams_failed"] == 0
    assert stats[f"{EXT_PROC_STATS}.failure_mode_allowed"] == 0
