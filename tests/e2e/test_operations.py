"""Operations through a real Envoy: metrics counts, request-id logs, gRPC health checks and draining."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from support.metrics import metric, scrape_metrics
from support.plugins import scripted
from support.processes import free_port, wait_until

from .conftest import StackFactory
from .harness import Stack, request

pytestmark = pytest.mark.e2e

# Envoy probes every 100 ms and trusts one answer, so the tests see state changes quickly.
HEALTH_CHECKED = {
    "health_checks": [
        {
            "timeout": "1s",
            "interval": "0.1s",
            "no_traffic_interval": "0.1s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "grpc_health_check": {},
        }
    ]
}


def config(admin_port: int, *plugins: dict[str, Any], **server: Any) -> str:
    return json.dumps({"server": {"admin_listen": f"127.0.0.1:{admin_port}", **server}, "plugins": list(plugins)})


def healthy_hosts(stack: Stack) -> int:
    return stack.envoy_stat("cluster.extproc.membership_healthy")


def test_metrics_count_the_traffic_envoy_sent(plugin_dir: Path, make_stack: StackFactory) -> None:
    admin = free_port()
    tag = scripted(plugin_dir, "tag", process_request_headers={"headers": {"set": [{"name": "x-tag", "value": "1"}]}})
    deny_output = {"immediate_response": {"status": 403, "body": {"text": "no"}}}
    deny = scripted(plugin_dir, "deny", process_request_headers=deny_output) | {"match": {"path_prefix": "/deny"}}
    broken = {"name": "broken", "path": str(plugin_dir / "trap.wasm"), "match": {"path_prefix": "/trap"}}
    with make_stack(config(admin, tag, deny, broken, log_format="json")) as stack:
        admin_url = f"http://127.0.0.1:{admin}"
        statuses = [request("GET", f"{stack.url}/ok").status for _ in range(3)]
        statuses += [request("GET", f"{stack.url}/deny").status for _ in range(2)]
        statuses.append(request("GET", f"{stack.url}/trap", headers=[("x-request-id", "trap-req-1")]).status)
        # Envoy may end a stream a moment after the client has its response.
        wait_until(lambda: metric(scrape_metrics(admin_url), "extproc_active_streams") == 0, 10, "streams to end")
        samples = scrape_metrics(admin_url)
        trap_line = stack.wait_for_server_log('"plugin": "broken"')

    assert statuses == [200, 200, 200, 403, 403, 503]
    headers = "process_request_headers"
    assert metric(samples, "extproc_streams_total") == 6
    assert metric(samples, "extproc_plugin_calls_total", plugin="tag", phase=headers) == 6
    assert metric(samples, "extproc_plugin_calls_total", plugin="deny", phase=headers) == 2
    assert metric(samples, "extproc_plugin_calls_total", plugin="broken", phase=headers) == 1
    assert metric(samples, "extproc_plugin_failures_total", plugin="broken", phase=headers, kind="trap") == 1
    assert metric(samples, "extproc_plugin_call_duration_seconds_count", plugin="tag", phase=headers) == 6
    assert metric(samples, "extproc_plugin_call_duration_seconds_bucket", plugin="tag", phase=headers, le="+Inf") == 6
    assert metric(samples, "extproc_immediate_responses_total", status="403") == 2
    assert metric(samples, "extproc_immediate_responses_total", status="503") == 1
    assert not any(
        name == "extproc_plugin_failures_total" and dict(labels)["plugin"] != "broken" for name, labels in samples
    )
    [config_info] = [dict(labels) for name, labels in samples if name == "extproc_config_info"]
    assert len(config_info["sha256"]) == 64
    assert metric(samples, "extproc_build_info", **_build_labels(samples)) == 1

    # The failure's log line is JSON, names the plugin and carries the request id Envoy passed on.
    [line] = [json.loads(text) for text in trap_line.splitlines() if '"plugin": "broken"' in text]
    assert line["request_id"] == "trap-req-1"
    assert (line["phase"], line["kind"], line["level"]) == (headers, "trap", "warning")


def _build_labels(samples: dict[Any, float]) -> dict[str, str]:
    [labels] = [dict(labels) for name, labels in samples if name == "extproc_build_info"]
    return labels


def test_admin_endpoints(plugin_dir: Path, make_stack: StackFactory) -> None:
    admin = free_port()
    transform = {"name": "t", "path": str(plugin_dir / "transform.wasm"), "execution_points": ["request_body"]}
    off = {"name": "off", "path": str(plugin_dir / "echo.wasm"), "enabled": False}
    with make_stack(config(admin, transform, off)) as stack:
        admin_url = f"http://127.0.0.1:{admin}"
        assert request("GET", f"{admin_url}/healthz").status == 200
        ready = request("GET", f"{admin_url}/readyz")
        plugins = request("GET", f"{admin_url}/plugins").json()["plugins"]
        reload = request("POST", f"{admin_url}/reload")
        stack.server.check_running()

    assert (ready.status, ready.text) == (200, f"serving 1 plugin(s) on 127.0.0.1:{stack.extproc_port}\n")
    [t, disabled] = plugins
    assert t["name"] == "t"
    assert t["execution_points"] == ["request_body"]
    assert "process_request_headers" in t["exports"]
    assert len(t["sha256"]) == 64
    assert t["state"] == "closed"
    assert disabled == {"name": "off", "path": str(plugin_dir / "echo.wasm"), "state": "disabled"}
    assert reload.status == 200
    assert reload.json()["ok"] is True


def test_envoy_health_check_follows_the_drain(plugin_dir: Path, make_stack: StackFactory) -> None:
    admin = free_port()
    tag = scripted(plugin_dir, "tag", process_request_headers={"headers": {"set": [{"name": "x-tag", "value": "1"}]}})
    # A drain far longer than the test: the server must still be up, only unhealthy, when checked.
    yaml = config(admin, tag, drain_ms=60_000)
    with make_stack(yaml, extproc_cluster=HEALTH_CHECKED) as stack:
        wait_until(lambda: healthy_hosts(stack) == 1, 10, "Envoy to mark the ext_proc host healthy")
        assert request("GET", f"{stack.url}/before").status == 200

        assert stack.server.pid is not None
        os.kill(stack.server.pid, signal.SIGTERM)
        wait_until(lambda: healthy_hosts(stack) == 0, 10, "Envoy to mark the draining host unhealthy")
        stack.server.check_running()
        readyz = request("GET", f"http://127.0.0.1:{admin}/readyz")
        # Still serving what is sent: only health checkers were told to go away.
        during = request("GET", f"{stack.url}/during")
        checks_failed = stack.envoy_stat("cluster.extproc.health_check.failure")

    assert (readyz.status, readyz.text) == (503, "draining\n")
    assert during.status == 200
    assert checks_failed >= 1
