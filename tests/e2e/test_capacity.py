"""Open streams cost no capacity: idle and stalled streams, the stream limit, abandoned calls, large bodies."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from support.metrics import metric, scrape_metrics
from support.processes import free_port, wait_until
from support.slow_clients import idle_streams, stalled_bodies

from .conftest import StackFactory
from .harness import Stack, request
from .load import run_load

pytestmark = pytest.mark.e2e

MARKER = {"headers": {"set": [{"name": "x-marker", "value": "1"}]}}


def marker(plugin_dir: Path, **fields: Any) -> dict[str, Any]:
    """A header plugin on request and response headers, as the README configures one."""
    return {
        "name": "marker",
        "path": str(plugin_dir / "scripted.wasm"),
        "config": {"process_request_headers": json.dumps(MARKER), "process_response_headers": "{}"},
        **fields,
    }


def with_admin(*plugins: dict[str, Any], **server: Any) -> tuple[str, str]:
    """A config with the admin endpoint on a free port, and that endpoint's URL."""
    admin_port = free_port()
    config = {"server": {"admin_listen": f"127.0.0.1:{admin_port}", **server}, "plugins": list(plugins)}
    return json.dumps(config), f"http://127.0.0.1:{admin_port}"


def marked(stack: Stack, path: str) -> bool:
    response = request("GET", f"{stack.url}{path}")
    assert response.status == 200, response
    return dict(json.loads(response.body)["headers"]).get("x-marker") == "1"


def test_idle_streams_do_not_block_others(plugin_dir: Path, make_stack: StackFactory) -> None:
    config, admin_url = with_admin(marker(plugin_dir))
    with make_stack(config) as stack, idle_streams(stack.extproc_port, 300):
        wait_until(lambda: metric(scrape_metrics(admin_url), "extproc_active_streams") >= 300, 30, "300 idle streams")
        outcomes = run_load(stack.url, 40, 8, lambda i: (f"/during/{i}", []))
    assert [o.error for o in outcomes if o.error] == []
    assert all(o.response is not None and o.response.status == 200 for o in outcomes)


def test_stalled_request_bodies_do_not_block_others(plugin_dir: Path, make_stack: StackFactory) -> None:
    body_plugin = {
        "name": "t",
        "path": str(plugin_dir / "transform.wasm"),
        "execution_points": ["request_body"],
        "config": {"suffix": "!"},
    }
    config, admin_url = with_admin(body_plugin, marker(plugin_dir))
    with make_stack(config) as stack, stalled_bodies(stack.listen_port, 150):
        # Each stalled request holds an ext_proc stream that waits for its body.
        wait_until(
            lambda: metric(scrape_metrics(admin_url), "extproc_active_streams") >= 150, 30, "150 streams waiting"
        )
        outcomes = run_load(stack.url, 40, 8, lambda i: (f"/during/{i}", []))
        posted = request("POST", f"{stack.url}/post", body=b"hello")
    assert [o.error for o in outcomes if o.error] == []
    assert all(o.response is not None and o.response.status == 200 for o in outcomes)
    assert json.loads(posted.body)["body"] == "hello!"


@pytest.mark.parametrize(("failure_mode_allow", "status"), [(True, 200), (False, 500)])
def test_streams_over_the_limit_are_refused_at_once(
    plugin_dir: Path, make_stack: StackFactory, failure_mode_allow: bool, status: int
) -> None:
    config, admin_url = with_admin(marker(plugin_dir), max_concurrent_streams=20)
    with make_stack(config, failure_mode_allow=failure_mode_allow, message_timeout_ms=5000) as stack:
        assert marked(stack, "/before")
        with idle_streams(stack.extproc_port, 20):
            started = time.monotonic()
            response = request("GET", f"{stack.url}/over")
            elapsed = time.monotonic() - started
        after = marked(stack, "/after")
        refused = metric(scrape_metrics(admin_url), "extproc_streams_ended_total", how="refused")
    # Envoy applies its failure mode at once instead of waiting out its 5 s message timeout.
    assert elapsed < 2.5
    assert response.status == status
    if failure_mode_allow:
        assert "x-marker" not in dict(json.loads(response.body)["headers"])  # passed through unprocessed
    assert refused >= 1
    assert after  # the streams that were held went away, and the server serves again


def test_abandoned_calls_are_cancelled_and_leave_the_breaker_closed(plugin_dir: Path, make_stack: StackFactory) -> None:
    # A plugin that runs until its 3 s timeout, behind an Envoy that waits 300 ms and then goes on without it.
    spinner = {
        "name": "spinner",
        "path": str(plugin_dir / "loop.wasm"),
        "timeout_ms": 3000,
        "pool_size": 2,
        "circuit_breaker": {"failures": 1, "cooldown_ms": 60_000},
    }
    config, admin_url = with_admin(spinner, inline_call_budget_us=0)
    with make_stack(config, failure_mode_allow=True, message_timeout_ms=300) as stack:
        outcomes = run_load(stack.url, 12, 4, lambda i: (f"/abandoned/{i}", []))
        phase = {"plugin": "spinner", "phase": "process_request_headers"}
        wait_until(
            lambda: metric(scrape_metrics(admin_url), "extproc_plugin_calls_cancelled_total", **phase) == 12,
            30,
            "every abandoned call to be counted as cancelled",
        )
        samples = scrape_metrics(admin_url)
        server_log = stack.server_log()
    assert [o.response.status if o.response else o.error for o in outcomes] == [200] * 12
    # With only two instances, calls that ran to their timeout would have left the later ones waiting for
    # an instance past Envoy's patience (pool_exhausted) and opened the breaker at the first failure.
    failures = [value for (name, _), value in samples.items() if name == "extproc_plugin_failures_total"]
    assert failures == []
    assert metric(samples, "extproc_plugin_circuit_breaker_state", plugin="spinner", state="closed") == 1
    assert metric(samples, "extproc_streams_ended_total", how="cancelled") >= 12
    assert "circuit" not in server_log


def test_five_mebibyte_bodies_round_trip_through_body_plugins(plugin_dir: Path, make_stack: StackFactory) -> None:
    both = {
        "name": "t",
        "path": str(plugin_dir / "transform.wasm"),
        "execution_points": ["request_body", "response_body"],
        "config": {"suffix": "!", "prefix": ">"},
        # The SDK holds a body many times over (docs/writing-plugins.md); the echoed response is JSON.
        "memory_limit_mb": 512,
        "timeout_ms": 10_000,
    }
    body = b"x" * (5 * 1024 * 1024)
    with make_stack(json.dumps({"plugins": [both]})) as stack:
        response = request("POST", f"{stack.url}/big", body=body)
        assert response.status == 200, response.body[:200]
    assert response.body.startswith(b">")
    echoed = json.loads(response.body[1:])
    assert echoed["body_length"] == len(body) + 1
    assert echoed["body"].endswith("x!")


@pytest.mark.parametrize(("on_error", "status"), [("fail_closed", 502), ("fail_open", 200)])
def test_bodies_over_max_body_bytes_get_the_documented_answer(
    plugin_dir: Path, make_stack: StackFactory, on_error: str, status: int
) -> None:
    body_plugin = {
        "name": "t",
        "path": str(plugin_dir / "transform.wasm"),
        "execution_points": ["request_body", "response_body"],
        "config": {"suffix": "!", "prefix": ">"},
        "on_error": on_error,
    }
    config = json.dumps({"server": {"max_body_bytes": 64 * 1024}, "plugins": [body_plugin]})
    with make_stack(config) as stack:
        too_large_request = request("POST", f"{stack.url}/upload", body=b"x" * (100 * 1024))
        too_large_response = request("GET", f"{stack.url}/bytes/{100 * 1024}")
        fits = request("POST", f"{stack.url}/fits", body=b"small")
    assert too_large_request.status == 413
    assert too_large_response.status == status
    if status == 200:  # passed through unprocessed: no prefix
        assert len(too_large_response.body) == 100 * 1024 and not too_large_response.body.startswith(b">")
    assert fits.status == 200 and fits.body.startswith(b">")  # the echoed JSON, processed
    assert json.loads(fits.body[1:])["body"] == "small!"
