"""Which plugin changes to routing headers Envoy applies, with and without the filter's mutation rules
(issue 19). `extproc envoy-config` and the Istio patch set `mutation_rules.allow_all_routing`; Envoy
Gateway's EnvoyExtensionPolicy cannot (docs/service-mesh.md), and its filter behaves like the one here
without the rules: `:path` changes apply, `:authority` and `:method` changes are dropped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.bootstrap import EXT_PROC_STATS
from support.plugins import scripted

from .conftest import StackFactory
from .harness import request

pytestmark = pytest.mark.e2e

CHANGES = {":path": "/moved", ":authority": "rewritten.example", ":method": "PUT", "x-kept": "1"}


@pytest.mark.parametrize("allow_all_routing", [True, False], ids=["with-rules", "without-rules"])
def test_routing_header_changes(plugin_dir: Path, make_stack: StackFactory, allow_all_routing: bool) -> None:
    output = {"headers": {"set": [{"name": name, "value": value} for name, value in CHANGES.items()]}}
    plugin = scripted(plugin_dir, "route", process_request_headers=output)
    with make_stack(json.dumps({"plugins": [plugin]}), allow_all_routing=allow_all_routing) as stack:
        seen = request("GET", f"{stack.url}/original", headers=[("host", "client.example")]).json()
        rejected = stack.envoy_stat(f"{EXT_PROC_STATS}.rejected_header_mutations")
    headers = dict(seen["headers"])
    assert seen["path"] == "/moved"
    assert headers["x-kept"] == "1"
    if allow_all_routing:
        assert (headers["host"], seen["method"], rejected) == ("rewritten.example", "PUT", 0)
    else:
        assert (headers["host"], seen["method"], rejected) == ("client.example", "GET", 2)
