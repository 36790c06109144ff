"""Only the phases a plugin's config uses reach the server: declared phases and execution points, through Envoy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.examples_build import example_wasm

from .conftest import StackFactory
from .harness import request

pytestmark = pytest.mark.e2e

STATS = "http.ingress_http.ext_proc.e2e."


def config_yaml(*plugins: dict[str, Any]) -> str:
    return json.dumps({"plugins": list(plugins)})  # JSON is YAML


@pytest.mark.parametrize(
    ("config", "messages"),
    [({"request": {"set": {"x-team": "payments"}}}, 1), ({"request": {}, "response": {"set": {"x-r": "1"}}}, 2)],
    ids=["request-rules-only", "both-sides"],
)
def test_a_readme_style_config_costs_only_the_round_trips_it_uses(
    make_stack: StackFactory, config: dict[str, Any], messages: int
) -> None:
    plugin = {"name": "header-rewrite", "path": str(example_wasm("header-rewrite")), "config": config}
    with make_stack(config_yaml(plugin)) as stack:
        response = request("GET", f"{stack.url}/declared")
        sent = stack.envoy_stats(STATS)
    assert response.status == 200
    assert sent[STATS + "stream_msgs_sent"] == messages


def test_generate_response_with_the_request_body_through_envoy(plugin_dir: Path, make_stack: StackFactory) -> None:
    # echo.wasm exports only generate_response and answers with its input; `request_body` hands it the body.
    echo = {"name": "echo", "path": str(plugin_dir / "echo.wasm"), "execution_points": ["request_body"]}
    with make_stack(config_yaml(echo)) as stack:
        response = request("POST", f"{stack.url}/generate", body=b"the body")
        upstream_before = stack.envoy_stat("cluster.upstream.upstream_rq_total")
    assert response.status == 200
    echoed = json.loads(response.body)
    assert echoed["phase"] == "GENERATE_RESPONSE"
    assert echoed["request"]["body"] == {"text": "the body"}
    assert upstream_before == 0  # generated, never sent upstream
