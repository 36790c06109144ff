"""What /plugins and extproc_plugin_circuit_breaker_state report: the breakers of the plugin set that serves.

A real server (no Envoy): requests over gRPC open a breaker, a reload changes (or fails to change) the set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc.config import load_config
from extproc.metrics import REGISTRY
from extproc.reload import Reloader
from extproc.server import Server
from tests.test_grpc_stream import REQUEST, exchange, headers

STATES = ("closed", "open", "half_open")


def gate(plugin_dir: Path) -> dict[str, Any]:
    """Fails the request while it carries x-fail; one failure opens its breaker for a long while."""
    return {
        "name": "report-gate",
        "path": str(plugin_dir / "flaky.wasm"),
        "circuit_breaker": {"failures": 1, "cooldown_ms": 600_000},
    }


class Running:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.server = Server(load_config(config_path), "127.0.0.1", 0)
        self.server.start()
        self.reloader = Reloader(self.server.plugins, self.server.install, self.server.threads)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = ep_grpc.ExternalProcessorStub(self.channel)

    def write(self, *plugins: dict[str, Any]) -> None:
        self.config_path.write_text(json.dumps({"plugins": list(plugins)}))

    def reported(self, plugin: str) -> tuple[str, str]:
        """(state in /plugins, the one state the gauge shows as 1)."""
        [entry] = [entry for entry in self.server.plugin_report() if entry["name"] == plugin]
        gauge = {state: REGISTRY.get_sample_value(_GAUGE, {"plugin": plugin, "state": state}) for state in STATES}
        shown = [state for state, value in gauge.items() if value == 1]
        assert sum(value or 0 for value in gauge.values()) == 1, gauge
        return entry["state"], shown[0]


_GAUGE = "extproc_plugin_circuit_breaker_state"


@pytest.fixture
def running(tmp_path: Path, plugin_dir: Path) -> Iterator[Running]:
    path = tmp_path / "extproc.yaml"
    path.write_text(json.dumps({"plugins": [gate(plugin_dir)]}))
    serving = Running(path)
    yield serving
    serving.channel.close()
    serving.server.stop(0)


def test_a_failed_reload_leaves_the_live_breaker_reported(running: Running, plugin_dir: Path, tmp_path: Path) -> None:
    [reply] = exchange(running.stub, headers(*REQUEST, ("x-fail", "1")))
    assert reply.immediate_response.status.code == 503
    assert running.reported("report-gate") == ("open", "open")

    not_wasm = tmp_path / "not.wasm"
    not_wasm.write_bytes(b"text")
    # The gate loads (and gets a breaker of its own) before the second plugin fails the reload.
    running.write(gate(plugin_dir), {"name": "report-broken", "path": str(not_wasm)})
    assert not running.reloader.reload().ok

    [reply] = exchange(running.stub, headers(*REQUEST))
    assert reply.immediate_response.status.code == 503  # the live breaker is still open
    assert running.reported("report-gate") == ("open", "open")


def test_a_reload_reports_the_new_set_and_drops_removed_plugins(running: Running, plugin_dir: Path) -> None:
    exchange(running.stub, headers(*REQUEST, ("x-fail", "1")))
    other = gate(plugin_dir) | {"name": "report-other"}
    running.write(gate(plugin_dir), other)
    assert running.reloader.reload().ok
    # A reloaded plugin starts with a closed breaker, and requests meet it.
    assert running.reported("report-gate") == ("closed", "closed")
    [reply] = exchange(running.stub, headers(*REQUEST))
    assert reply.HasField("request_headers")

    running.write(gate(plugin_dir))
    assert running.reloader.reload().ok
    assert [entry["name"] for entry in running.server.plugin_report()] == ["report-gate"]
    assert all(REGISTRY.get_sample_value(_GAUGE, {"plugin": "report-other", "state": s}) is None for s in STATES)
