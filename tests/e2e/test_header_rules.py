"""Header output through a real Envoy: what plugins may not smuggle upstream, what bytes survive, how
repeated headers arrive (issue 15)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support.plugins import scripted
from tests.examples_build import example_wasm

from .conftest import StackFactory
from .harness import Upstream, request

pytestmark = pytest.mark.e2e

LATIN1 = b"caf\xe9"


def under(plugin_dir: Path, prefix: str, output: dict[str, Any]) -> dict[str, Any]:
    """The scripted plugin answering request headers with `output`, for paths under `prefix`."""
    return scripted(plugin_dir, prefix.strip("/"), process_request_headers=output) | {"match": {"path_prefix": prefix}}


def set_header(name: str, **value: str) -> dict[str, Any]:
    return {"headers": {"set": [{"name": name, **value}]}}


# Each would put whitespace or a raw byte into the request line Envoy writes to an HTTP/1 upstream.
INJECTIONS = {
    "/tab-in-path": set_header(":path", value="/x HTTP/1.1\tinjected/"),
    "/space-in-path": set_header(":path", value="/injected HTTP/1.0"),
    "/space-in-method": set_header(":method", value="GET /injected HTTP/1.0\tX"),
    "/byte-in-path": set_header(":path", raw_value=base64.b64encode(b"/caf\xe9").decode()),
    "/userinfo": set_header(":authority", value="user@evil.example"),
}


def test_request_line_injection_never_reaches_the_upstream(
    plugin_dir: Path, make_stack: StackFactory, upstream: Upstream
) -> None:
    plugins = [under(plugin_dir, prefix, output) for prefix, output in INJECTIONS.items()]
    with make_stack(json.dumps({"plugins": plugins})) as stack:
        before = upstream.count()
        responses = {prefix: request("GET", f"{stack.url}{prefix}") for prefix in INJECTIONS}
        after = upstream.count()
        log = stack.server_log()
    # fail_closed: the plugin's output broke the contract, so the request ends in the error status.
    assert {prefix: r.status for prefix, r in responses.items()} == dict.fromkeys(INJECTIONS, 503)
    assert after == before
    assert log.count("bad_output") >= len(INJECTIONS)


def test_header_bytes_that_are_not_utf8_survive_a_plugin_that_writes_them_back(
    plugin_dir: Path, make_stack: StackFactory
) -> None:
    rewrite = {
        "name": "header-rewrite",
        "path": str(example_wasm("header-rewrite")),
        "config": {"request": {"rename": {"x-raw": "x-moved"}}},
        "match": {"path_prefix": "/echo"},
    }
    echo = {"name": "echo", "path": str(plugin_dir / "echo.wasm"), "match": {"path_prefix": "/generated"}}
    with make_stack(json.dumps({"plugins": [echo, rewrite]})) as stack:
        # http.client sends a str header value as latin-1: this is the byte 0xE9 on the wire.
        moved = request("GET", f"{stack.url}/echo", headers=[("x-raw", LATIN1.decode("latin-1"))])
        seen = request("GET", f"{stack.url}/generated", headers=[("x-raw", LATIN1.decode("latin-1"))])
    assert moved.status == 200
    # The echo upstream's http.server decodes header bytes as latin-1, so encoding back gives the wire bytes.
    upstream_headers = [(name, value.encode("latin-1")) for name, value in moved.json()["headers"]]
    assert ("x-moved", LATIN1) in upstream_headers
    assert all(name != "x-raw" for name, _ in upstream_headers)
    assert seen.status == 200
    plugin_saw = [h for h in seen.json()["request"]["headers"] if h["name"] == "x-raw"]
    assert plugin_saw == [{"name": "x-raw", "value": "caf\ufffd", "raw_value": base64.b64encode(LATIN1).decode()}]


def test_http2_cookies_arrive_joined_other_repeated_headers_do_not(plugin_dir: Path, make_stack: StackFactory) -> None:
    """What docs/plugin-abi.md says about repeated headers, as Envoy does it."""
    echo = {"name": "echo", "path": str(plugin_dir / "echo.wasm")}
    with make_stack(json.dumps({"plugins": [echo]})) as stack:
        repeated = ["-H", "cookie: a=1", "-H", "cookie: b=2", "-H", "x-rep: 1", "-H", "x-rep: 2"]
        http2 = subprocess.run(
            ["curl", "-sS", "--http2-prior-knowledge", *repeated, f"{stack.url}/h2"],
            capture_output=True,
            check=True,
            timeout=30,
        )
        http1 = request("GET", f"{stack.url}/h1", headers=[("cookie", "a=1"), ("cookie", "b=2")])

    def values(body: bytes, name: str) -> list[str]:
        return [h["value"] for h in json.loads(body)["request"]["headers"] if h["name"] == name]

    assert values(http2.stdout, "cookie") == ["a=1; b=2"]
    assert values(http2.stdout, "x-rep") == ["1", "2"]
    assert values(http1.body, "cookie") == ["a=1", "b=2"]
